//! The one error type of the crate.

/// Everything that can go wrong sealing, opening, wrapping or unwrapping.
///
/// No variant ever carries key material, plaintext or a KMS token.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The bytes are not a sealed value or wrapped key of a format this build knows
    /// (too short, wrong magic, unknown format version, bad base64, wrong length).
    #[error("malformed ciphertext: not a sealed value or wrapped key this build can read")]
    Malformed,
    /// Authentication failed: wrong key, associated data of another tenant/kind/object,
    /// an edited header, or tampered bytes. Deliberately says no more than that.
    #[error("decryption failed: wrong key, wrong tenant or object, or tampered data")]
    Decrypt,
    /// The value names a key version the keyring does not hold.
    #[error("unknown key version {0}")]
    UnknownKeyVersion(u32),
    /// The key-management service failed or refused (message says which, and what to check).
    #[error("{0}")]
    Kms(String),
    /// Bad configuration (keyring syntax, KMS address, key name ...).
    #[error("crypto configuration: {0}")]
    Config(String),
    /// A file operation failed; the first field says which operation and which file.
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
}

impl CryptoError {
    pub(crate) fn io(context: impl Into<String>, err: std::io::Error) -> Self {
        Self::Io(context.into(), err)
    }
}
