//! Cryptographic separation of tenants (DESIGN.md, invariant 3).
//!
//! * Every tenant has data keys ([`DataKey`], 256-bit, zeroized on drop). Secrets are
//!   [`seal`]ed with XChaCha20-Poly1305 whose associated data binds the tenant, the object kind
//!   and the object id ([`Aad`]) and the sealed header (with the data-key version), so a
//!   ciphertext moved to another tenant or object fails to [`open`].
//! * Data keys are stored only wrapped ([`WrappedKey`]) by a key-encryption key held by a
//!   pluggable [`Kms`]: [`LocalKms`] (a keyring from a file or `AGENTPLANE_MASTER_KEYS`, for
//!   self-hosting) or [`TransitKms`] (Vault / OpenBao Transit, one derived KEK per tenant).
//! * Master-key rotation is [`Kms::rotate`] followed by [`Kms::rewrap`] of every wrapped key;
//!   sealed data is untouched. Erasing a tenant destroys its wrapped keys and
//!   [`KeyCache::forget_tenant`] drops the cached ones (crypto-shredding, which also covers
//!   backups). Nothing falls back to plaintext when a key is missing.
//!
//! Typical use:
//!
//! ```
//! # async fn demo() -> Result<(), agentplane_crypto::CryptoError> {
//! use agentplane_crypto::{open, seal, sealed_key_version, Aad, DataKey, KeyCache, Kms, LocalKms};
//! let kms = LocalKms::from_keyring(&LocalKms::new_keyring_spec())?;
//! let tenant = agentplane_core::TenantId::new();
//! // Provisioning: a data key, stored wrapped beside the tenant as version 1.
//! let key = DataKey::generate();
//! let wrapped = kms.wrap(tenant, &key).await?;
//! let sealed = seal(&key, 1, &Aad::new(tenant, "provider_credential", "openai"), b"sk-...");
//! // Later: pick the data key by the sealed version, through the cache.
//! let cache = KeyCache::new();
//! let key = cache.get_or_unwrap(&kms, tenant, sealed_key_version(&sealed)?, &wrapped).await?;
//! let secret = open(&key, &Aad::new(tenant, "provider_credential", "openai"), &sealed)?;
//! assert_eq!(&secret[..], b"sk-...");
//! # Ok(()) }
//! ```

mod cache;
mod error;
mod kms;
mod local;
mod seal;
mod stream;
mod transit;

pub use cache::KeyCache;
pub use error::CryptoError;
pub use kms::{Kms, WrappedKey};
pub use local::{LocalKms, LOCAL_KMS_NAME};
pub use seal::{
    open, seal, sealed_key_version, Aad, DataKey, FORMAT_VERSION, HEADER_LEN, KEY_LEN, MAGIC,
    NONCE_LEN, TAG_LEN,
};
pub use stream::{StreamOpener, StreamSealer, STREAM_CHUNK, STREAM_HEADER_LEN};
pub use transit::{TransitKms, KMS_TIMEOUT};
pub use zeroize::Zeroizing;
