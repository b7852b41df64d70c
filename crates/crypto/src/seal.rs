//! Sealing: XChaCha20-Poly1305 with associated data that binds a value to its place.
//!
//! Sealed layout (all integers big-endian):
//!
//! ```text
//! offset  len  field
//! 0       3    magic "APS"
//! 3       1    format version (1)
//! 4       4    data-key version (u32)
//! 8       24   random nonce
//! 32      n    ciphertext
//! 32+n    16   Poly1305 tag
//! ```
//!
//! The AEAD's associated data is `header (32 bytes) || Aad::canonical_bytes()`, so moving
//! a ciphertext to another tenant, kind or object id, or editing the key version in the
//! header, makes [`open`] fail with [`CryptoError::Decrypt`].

use crate::CryptoError;
use agentplane_core::TenantId;
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{Key, KeyInit, Tag, XChaCha20Poly1305, XNonce};
use rand::rngs::OsRng;
use rand::RngCore;
use std::fmt;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Magic bytes opening every sealed value.
pub const MAGIC: &[u8; 3] = b"APS";
/// The sealed format this build writes (and the only one it reads).
pub const FORMAT_VERSION: u8 = 1;
/// XChaCha20 nonce length.
pub const NONCE_LEN: usize = 24;
/// Header length: magic, format version, key version, nonce.
pub const HEADER_LEN: usize = 3 + 1 + 4 + NONCE_LEN;
/// Poly1305 tag length.
pub const TAG_LEN: usize = 16;
/// Length of a [`DataKey`] (and of a local KEK), in bytes.
pub const KEY_LEN: usize = 32;

/// Associated data binding a ciphertext to its place: tenant, object kind, object id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Aad {
    tenant: TenantId,
    kind: String,
    object_id: String,
}

impl Aad {
    /// `kind` names the kind of object (`"provider_credential"`, `"audit_pii"` ...),
    /// `object_id` the object within the tenant.
    pub fn new(tenant: TenantId, kind: &str, object_id: &str) -> Self {
        Self {
            tenant,
            kind: kind.to_owned(),
            object_id: object_id.to_owned(),
        }
    }

    pub fn tenant(&self) -> TenantId {
        self.tenant
    }

    pub fn kind(&self) -> &str {
        &self.kind
    }

    pub fn object_id(&self) -> &str {
        &self.object_id
    }

    /// The unambiguous encoding authenticated with every seal. Stable forever (stored
    /// ciphertexts depend on it): the tenant's 16 UUID bytes, then the kind and the object id,
    /// each as a u64 big-endian byte length followed by its UTF-8 bytes.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 8 + self.kind.len() + 8 + self.object_id.len());
        out.extend_from_slice(self.tenant.as_uuid().as_bytes());
        for part in [&self.kind, &self.object_id] {
            out.extend_from_slice(&(part.len() as u64).to_be_bytes());
            out.extend_from_slice(part.as_bytes());
        }
        out
    }
}

/// A 256-bit key: a tenant data key (or, inside the crate, a local KEK).
///
/// Lives on the heap so moves do not leave copies behind, is zeroized on drop, has no
/// `Clone`, and its `Debug` prints `DataKey(**redacted**)`. Share it with `Arc`.
pub struct DataKey(Box<[u8; KEY_LEN]>);

impl DataKey {
    /// A fresh random key from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut key = Self(Box::new([0u8; KEY_LEN]));
        OsRng.fill_bytes(&mut key.0[..]);
        key
    }

    /// A key from 32 raw bytes (what a KMS returns on unwrap). Other lengths are
    /// [`CryptoError::Malformed`]. The caller should zeroize its copy.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, CryptoError> {
        if bytes.len() != KEY_LEN {
            return Err(CryptoError::Malformed);
        }
        let mut key = Self(Box::new([0u8; KEY_LEN]));
        key.0.copy_from_slice(bytes);
        Ok(key)
    }

    /// The raw key bytes, for a [`crate::Kms`] implementation to wrap. Do not copy them
    /// anywhere that is not zeroized.
    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    pub(crate) fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(Key::from_slice(&self.0[..]))
    }
}

impl Drop for DataKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl ZeroizeOnDrop for DataKey {}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(**redacted**)")
    }
}

/// Seals `plaintext` under `key` (whose version is `key_version`), bound to `aad`.
///
/// # Panics
/// Only if `plaintext` exceeds XChaCha20-Poly1305's limit of 2^38 - 64 bytes (about
/// 256 GiB), the one error the AEAD can report; nothing in Agentplane holds such a value.
pub fn seal(key: &DataKey, key_version: u32, aad: &Aad, plaintext: &[u8]) -> Vec<u8> {
    let nonce = random_nonce();
    let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(MAGIC);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&key_version.to_be_bytes());
    out.extend_from_slice(&nonce);
    let associated = associated_data(&out, aad);
    out.extend_from_slice(plaintext);
    let sealed = key.cipher().encrypt_in_place_detached(
        XNonce::from_slice(&nonce),
        &associated,
        &mut out[HEADER_LEN..],
    );
    match sealed {
        Ok(tag) => {
            out.extend_from_slice(&tag);
            out
        }
        Err(_) => {
            out.zeroize();
            #[allow(clippy::panic)]
            {
                panic!("plaintext exceeds the XChaCha20-Poly1305 limit (256 GiB)")
            }
        }
    }
}

/// The data-key version a sealed value names, read from its header (nothing is decrypted,
/// nothing authenticated: use it only to pick the key to [`open`] with).
pub fn sealed_key_version(sealed: &[u8]) -> Result<u32, CryptoError> {
    parse_header(sealed).map(|h| h.key_version)
}

/// Opens a value sealed by [`seal`]. The caller picks `key` by [`sealed_key_version`].
pub fn open(key: &DataKey, aad: &Aad, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let header = parse_header(sealed)?;
    let associated = associated_data(&sealed[..HEADER_LEN], aad);
    let (ciphertext, tag) = sealed[HEADER_LEN..].split_at(sealed.len() - HEADER_LEN - TAG_LEN);
    let mut buf = Zeroizing::new(ciphertext.to_vec());
    key.cipher()
        .decrypt_in_place_detached(
            XNonce::from_slice(header.nonce),
            &associated,
            &mut buf[..],
            Tag::from_slice(tag),
        )
        .map_err(|_| CryptoError::Decrypt)?;
    Ok(buf)
}

struct Header<'a> {
    key_version: u32,
    nonce: &'a [u8],
}

fn parse_header(sealed: &[u8]) -> Result<Header<'_>, CryptoError> {
    if sealed.len() < HEADER_LEN + TAG_LEN || &sealed[..3] != MAGIC || sealed[3] != FORMAT_VERSION {
        return Err(CryptoError::Malformed);
    }
    let mut version = [0u8; 4];
    version.copy_from_slice(&sealed[4..8]);
    Ok(Header {
        key_version: u32::from_be_bytes(version),
        nonce: &sealed[8..HEADER_LEN],
    })
}

fn associated_data(header: &[u8], aad: &Aad) -> Vec<u8> {
    let mut associated = header.to_vec();
    associated.extend_from_slice(&aad.canonical_bytes());
    associated
}

pub(crate) fn random_nonce() -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    nonce
}

/// Raw XChaCha20-Poly1305 for key wrapping: returns `nonce || ciphertext || tag`.
pub(crate) fn wrap_raw(kek: &DataKey, associated: &[u8], secret: &[u8; KEY_LEN]) -> Vec<u8> {
    let nonce = random_nonce();
    let mut out = Vec::with_capacity(NONCE_LEN + secret.len() + TAG_LEN);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(secret);
    match kek.cipher().encrypt_in_place_detached(
        XNonce::from_slice(&nonce),
        associated,
        &mut out[NONCE_LEN..],
    ) {
        Ok(tag) => {
            out.extend_from_slice(&tag);
            out
        }
        Err(_) => {
            out.zeroize();
            // Unreachable: the only AEAD error is a message above 256 GiB, this one is 32 bytes.
            Vec::new()
        }
    }
}

/// Inverse of [`wrap_raw`].
pub(crate) fn unwrap_raw(
    kek: &DataKey,
    associated: &[u8],
    wrapped: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    if wrapped.len() < NONCE_LEN + TAG_LEN {
        return Err(CryptoError::Malformed);
    }
    let (nonce, rest) = wrapped.split_at(NONCE_LEN);
    let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
    let mut buf = Zeroizing::new(ciphertext.to_vec());
    kek.cipher()
        .decrypt_in_place_detached(
            XNonce::from_slice(nonce),
            associated,
            &mut buf[..],
            Tag::from_slice(tag),
        )
        .map_err(|_| CryptoError::Decrypt)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use rand::Rng;

    fn aad(tenant: TenantId) -> Aad {
        Aad::new(tenant, "provider_credential", "openai-main")
    }

    #[test]
    fn round_trip() {
        let key = DataKey::generate();
        let t = TenantId::new();
        let sealed = seal(&key, 7, &aad(t), b"sk-secret");
        assert_eq!(&sealed[..3], b"APS");
        assert_eq!(sealed[3], 1);
        assert_eq!(sealed.len(), HEADER_LEN + 9 + TAG_LEN);
        assert_eq!(sealed_key_version(&sealed).unwrap(), 7);
        assert_eq!(&open(&key, &aad(t), &sealed).unwrap()[..], b"sk-secret");
        // The empty plaintext too.
        let sealed = seal(&key, 1, &aad(t), b"");
        assert!(open(&key, &aad(t), &sealed).unwrap().is_empty());
    }

    #[test]
    fn another_place_does_not_open() {
        let key = DataKey::generate();
        let t = TenantId::new();
        let sealed = seal(&key, 1, &aad(t), b"sk-secret");
        for other in [
            Aad::new(TenantId::new(), "provider_credential", "openai-main"),
            Aad::new(t, "webhook_secret", "openai-main"),
            Aad::new(t, "provider_credential", "openai-other"),
            // Same concatenation, other split: the encoding is unambiguous.
            Aad::new(t, "provider_credentialopenai", "-main"),
        ] {
            assert!(
                matches!(open(&key, &other, &sealed), Err(CryptoError::Decrypt)),
                "{other:?}"
            );
        }
        assert!(matches!(
            open(&DataKey::generate(), &aad(t), &sealed),
            Err(CryptoError::Decrypt)
        ));
    }

    #[test]
    fn edited_key_version_does_not_open() {
        let key = DataKey::generate();
        let t = TenantId::new();
        let mut sealed = seal(&key, 1, &aad(t), b"sk-secret");
        sealed[4..8].copy_from_slice(&2u32.to_be_bytes());
        assert_eq!(sealed_key_version(&sealed).unwrap(), 2);
        assert!(matches!(
            open(&key, &aad(t), &sealed),
            Err(CryptoError::Decrypt)
        ));
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let key = DataKey::generate();
        let t = TenantId::new();
        let sealed = seal(&key, 1, &aad(t), b"a secret of some length");
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            let err = open(&key, &aad(t), &bad).unwrap_err();
            if i < 4 {
                assert!(matches!(err, CryptoError::Malformed), "byte {i}: {err}");
            } else {
                assert!(matches!(err, CryptoError::Decrypt), "byte {i}: {err}");
            }
        }
    }

    #[test]
    fn truncated_and_garbage_are_malformed() {
        let key = DataKey::generate();
        let t = TenantId::new();
        let sealed = seal(&key, 1, &aad(t), b"x");
        for len in 0..HEADER_LEN + TAG_LEN {
            assert!(matches!(
                open(&key, &aad(t), &sealed[..len.min(sealed.len())]),
                Err(CryptoError::Malformed)
            ));
            assert!(matches!(
                sealed_key_version(&sealed[..len.min(sealed.len())]),
                Err(CryptoError::Malformed)
            ));
        }
        // Cutting the tag short of a longer value is a decryption failure, not a panic.
        let long = seal(&key, 1, &aad(t), &[7u8; 100]);
        assert!(matches!(
            open(&key, &aad(t), &long[..long.len() - 1]),
            Err(CryptoError::Decrypt)
        ));
        let mut rng = rand::thread_rng();
        for _ in 0..200 {
            let len = rng.gen_range(0..200);
            let garbage: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            let err = open(&key, &aad(t), &garbage).unwrap_err();
            assert!(matches!(err, CryptoError::Malformed | CryptoError::Decrypt));
        }
        assert!(matches!(
            open(
                &key,
                &aad(t),
                b"not a sealed value at all, just text of some length"
            ),
            Err(CryptoError::Malformed)
        ));
        let mut future = sealed.clone();
        future[3] = 2;
        assert!(matches!(
            open(&key, &aad(t), &future),
            Err(CryptoError::Malformed)
        ));
    }

    #[test]
    fn nonces_differ() {
        let key = DataKey::generate();
        let t = TenantId::new();
        let a = seal(&key, 1, &aad(t), b"same");
        let b = seal(&key, 1, &aad(t), b"same");
        assert_ne!(a[8..HEADER_LEN], b[8..HEADER_LEN]);
        assert_ne!(a, b);
    }

    #[test]
    fn random_round_trips() {
        let mut rng = rand::thread_rng();
        let key = DataKey::generate();
        for _ in 0..200 {
            let len = rng.gen_range(0..4096);
            let plaintext: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            let kind: String = (0..rng.gen_range(0..20))
                .map(|_| rng.gen::<char>())
                .collect();
            let object: String = (0..rng.gen_range(0..40))
                .map(|_| rng.gen::<char>())
                .collect();
            let version = rng.gen();
            let aad = Aad::new(TenantId::new(), &kind, &object);
            let sealed = seal(&key, version, &aad, &plaintext);
            assert_eq!(sealed_key_version(&sealed).unwrap(), version);
            assert_eq!(&open(&key, &aad, &sealed).unwrap()[..], &plaintext[..]);
        }
    }

    #[test]
    fn keys_are_redacted_and_distinct() {
        let key = DataKey::generate();
        assert_eq!(format!("{key:?}"), "DataKey(**redacted**)");
        assert_eq!(format!("{:?}", Some(&key)), "Some(DataKey(**redacted**))");
        assert_ne!(key.expose_secret(), DataKey::generate().expose_secret());
        let copy = DataKey::from_slice(key.expose_secret()).unwrap();
        assert_eq!(copy.expose_secret(), key.expose_secret());
        assert!(matches!(
            DataKey::from_slice(&[0u8; 31]),
            Err(CryptoError::Malformed)
        ));
    }
}
