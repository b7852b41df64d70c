//! Local master keys for self-hosting: a keyring of versioned 32-byte KEKs.

use crate::kms::check_provider;
use crate::seal::{unwrap_raw, wrap_raw, KEY_LEN};
use crate::{CryptoError, DataKey, Kms, WrappedKey};
use agentplane_core::TenantId;
use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rand::rngs::OsRng;
use rand::RngCore;
use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use zeroize::Zeroizing;

/// The provider name of [`LocalKms`] in [`WrappedKey::kms`].
pub const LOCAL_KMS_NAME: &str = "local";

type Ring = BTreeMap<u32, DataKey>;

/// Local master keys (self-hosting): a keyring of versioned 32-byte keys, the highest
/// version current.
///
/// Wrapping is XChaCha20-Poly1305 under the KEK with associated data
/// `"agentplane-kek|<tenant id>|v<version>"`; the blob is base64 of `nonce || ciphertext || tag`.
/// The keyring format (`AGENTPLANE_MASTER_KEYS`, or the key file) is
/// `"1:<base64 32 bytes>,2:<base64 32 bytes>"`; commas, spaces and newlines all separate entries.
pub struct LocalKms {
    ring: RwLock<Ring>,
    path: Option<PathBuf>,
    rotating: Mutex<()>,
}

impl LocalKms {
    /// Parses `"1:<base64 32 bytes>,2:<base64 32 bytes>"` (the `AGENTPLANE_MASTER_KEYS` format).
    pub fn from_keyring(spec: &str) -> Result<Self, CryptoError> {
        Ok(Self::with_ring(parse_keyring(spec)?, None))
    }

    /// Reads the same format from a file; creates the file (mode 0600, one fresh key
    /// `"1:<...>"`) if `create` and it is missing. Creation is atomic and never replaces a
    /// file another process created first.
    pub fn from_file(path: &Path, create: bool) -> Result<Self, CryptoError> {
        if create {
            create_if_missing(path)?;
        }
        let ring = read_ring_file(path)?;
        Ok(Self::with_ring(ring, Some(path.to_owned())))
    }

    /// A fresh one-key keyring, `"1:<base64 of 32 random bytes>"`, e.g. for an operator to put
    /// in `AGENTPLANE_MASTER_KEYS`.
    pub fn new_keyring_spec() -> Zeroizing<String> {
        let key = DataKey::generate();
        let mut ring = Ring::new();
        ring.insert(1, key);
        format_ring(&ring)
    }

    /// The KEK versions held, ascending.
    pub fn versions(&self) -> Vec<u32> {
        self.read().keys().copied().collect()
    }

    /// The key file this ring was read from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn with_ring(ring: Ring, path: Option<PathBuf>) -> Self {
        Self {
            ring: RwLock::new(ring),
            path,
            rotating: Mutex::new(()),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Ring> {
        self.ring.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Ring> {
        self.ring.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds the versions the key file holds and memory does not (another process rotated).
    /// The same version with different key bytes is a conflict and an error.
    fn merge_file(&self, path: &Path) -> Result<(), CryptoError> {
        let from_file = read_ring_file(path)?;
        let mut ring = self.write();
        for (version, key) in from_file {
            match ring.get(&version) {
                Some(held) if held.expose_secret() != key.expose_secret() => {
                    return Err(CryptoError::Config(format!(
                        "master key version {version} in {} differs from the one in memory: \
                         two processes rotated at once; keep one version {version} and restart",
                        path.display()
                    )));
                }
                Some(_) => {}
                None => {
                    ring.insert(version, key);
                }
            }
        }
        Ok(())
    }

    fn wrap_sync(&self, tenant: TenantId, key: &DataKey) -> Result<WrappedKey, CryptoError> {
        let ring = self.read();
        let (&version, kek) = ring
            .last_key_value()
            .ok_or_else(|| CryptoError::Config("the master keyring is empty".into()))?;
        let blob = wrap_raw(
            kek,
            kek_aad(tenant, version).as_bytes(),
            key.expose_secret(),
        );
        Ok(WrappedKey {
            kms: LOCAL_KMS_NAME.to_owned(),
            kek_version: version,
            blob: B64.encode(blob),
        })
    }

    fn unwrap_with_ring(
        &self,
        tenant: TenantId,
        wrapped: &WrappedKey,
        raw: &[u8],
    ) -> Option<Result<DataKey, CryptoError>> {
        let ring = self.read();
        let kek = ring.get(&wrapped.kek_version)?;
        Some(
            unwrap_raw(kek, kek_aad(tenant, wrapped.kek_version).as_bytes(), raw)
                .and_then(|bytes| DataKey::from_slice(&bytes)),
        )
    }

    fn unwrap_sync(&self, tenant: TenantId, wrapped: &WrappedKey) -> Result<DataKey, CryptoError> {
        check_provider(LOCAL_KMS_NAME, wrapped)?;
        let raw = B64
            .decode(wrapped.blob.as_bytes())
            .map_err(|_| CryptoError::Malformed)?;
        if let Some(result) = self.unwrap_with_ring(tenant, wrapped, &raw) {
            return result;
        }
        // Another process may have rotated: pick up new versions from the key file once.
        if let Some(path) = &self.path {
            self.merge_file(path)?;
            if let Some(result) = self.unwrap_with_ring(tenant, wrapped, &raw) {
                return result;
            }
        }
        Err(CryptoError::UnknownKeyVersion(wrapped.kek_version))
    }

    fn rotate_sync(&self) -> Result<u32, CryptoError> {
        let _one_at_a_time = self.rotating.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(path) = &self.path {
            self.merge_file(path)?;
        }
        let key = DataKey::generate();
        let next = {
            let ring = self.read();
            let next = ring
                .last_key_value()
                .map_or(Some(1), |(v, _)| v.checked_add(1))
                .ok_or_else(|| CryptoError::Config("master key versions exhausted".into()))?;
            if let Some(path) = &self.path {
                let mut contents = format_ring(&ring);
                contents.pop(); // the newline
                contents.push(',');
                contents.push_str(&format!("{next}:"));
                contents.push_str(&Zeroizing::new(B64.encode(key.expose_secret())));
                contents.push('\n');
                replace_file(path, contents.as_bytes())?;
            }
            next
        };
        self.write().insert(next, key);
        Ok(next)
    }
}

impl fmt::Debug for LocalKms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKms")
            .field("versions", &self.versions())
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Kms for LocalKms {
    fn name(&self) -> String {
        LOCAL_KMS_NAME.to_owned()
    }

    async fn current_version(&self) -> Result<u32, CryptoError> {
        self.read()
            .last_key_value()
            .map(|(v, _)| *v)
            .ok_or_else(|| CryptoError::Config("the master keyring is empty".into()))
    }

    async fn wrap(&self, tenant: TenantId, key: &DataKey) -> Result<WrappedKey, CryptoError> {
        self.wrap_sync(tenant, key)
    }

    async fn unwrap(&self, tenant: TenantId, wrapped: &WrappedKey) -> Result<DataKey, CryptoError> {
        self.unwrap_sync(tenant, wrapped)
    }

    /// A key already under the current version is returned unchanged; otherwise it is
    /// unwrapped and wrapped again (locally the data key is necessarily in memory meanwhile).
    async fn rewrap(
        &self,
        tenant: TenantId,
        wrapped: &WrappedKey,
    ) -> Result<WrappedKey, CryptoError> {
        check_provider(LOCAL_KMS_NAME, wrapped)?;
        let current = self.current_version().await?;
        if wrapped.kek_version == current {
            // Still authenticate it, so a rewrap never vouches for a bad key.
            drop(self.unwrap_sync(tenant, wrapped)?);
            return Ok(wrapped.clone());
        }
        let key = self.unwrap_sync(tenant, wrapped)?;
        self.wrap_sync(tenant, &key)
    }

    /// Appends a fresh key to the ring; when built from a file, first picks up versions
    /// another process added, then rewrites the file atomically (temp file + rename, 0600).
    /// Run rotation from one process at a time (it is a job of the durable queue).
    async fn rotate(&self) -> Result<u32, CryptoError> {
        self.rotate_sync()
    }
}

fn kek_aad(tenant: TenantId, version: u32) -> String {
    format!("agentplane-kek|{tenant}|v{version}")
}

fn parse_keyring(spec: &str) -> Result<Ring, CryptoError> {
    const FORMAT: &str = "expected \"1:<base64 of 32 bytes>[,2:<base64 of 32 bytes>...]\"";
    let mut ring = Ring::new();
    let entries = spec
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|e| !e.is_empty());
    for (n, entry) in entries.enumerate() {
        let n = n + 1;
        // Messages never echo the entry: it may be key material.
        let (version, encoded) = entry.split_once(':').ok_or_else(|| {
            CryptoError::Config(format!("master key entry {n} has no ':'; {FORMAT}"))
        })?;
        let version: u32 = version.parse().ok().filter(|v| *v > 0).ok_or_else(|| {
            CryptoError::Config(format!(
                "master key entry {n}: the version before ':' must be a positive integer; {FORMAT}"
            ))
        })?;
        let bytes = Zeroizing::new(B64.decode(encoded.as_bytes()).map_err(|_| {
            CryptoError::Config(format!(
                "master key version {version} is not valid base64 (standard alphabet, \
                 e.g. the output of `openssl rand -base64 32`)"
            ))
        })?);
        if bytes.len() != KEY_LEN {
            return Err(CryptoError::Config(format!(
                "master key version {version} decodes to {} bytes, expected {KEY_LEN}",
                bytes.len()
            )));
        }
        let key = DataKey::from_slice(&bytes)?;
        if ring.insert(version, key).is_some() {
            return Err(CryptoError::Config(format!(
                "master key version {version} appears twice"
            )));
        }
    }
    if ring.is_empty() {
        return Err(CryptoError::Config(format!("no master keys; {FORMAT}")));
    }
    Ok(ring)
}

fn format_ring(ring: &Ring) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::new());
    for (i, (version, key)) in ring.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!("{version}:"));
        out.push_str(&Zeroizing::new(B64.encode(key.expose_secret())));
    }
    out.push('\n');
    out
}

fn read_ring_file(path: &Path) -> Result<Ring, CryptoError> {
    let text =
        Zeroizing::new(fs::read_to_string(path).map_err(|e| {
            CryptoError::io(format!("reading master key file {}", path.display()), e)
        })?);
    warn_if_readable_by_others(path);
    parse_keyring(&text).map_err(|e| match e {
        CryptoError::Config(m) => CryptoError::Config(format!("{}: {m}", path.display())),
        other => other,
    })
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{mode:o}"),
                "master key file is accessible to group or others; run chmod 600 on it"
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

/// Creates a new file readable by its owner only; fails if it exists.
fn create_private(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path)
}

/// Writes `contents` to a fresh 0600 temp file beside `path` and syncs it.
fn write_temp(path: &Path, contents: &[u8]) -> Result<PathBuf, CryptoError> {
    let name = path
        .file_name()
        .ok_or_else(|| {
            CryptoError::Config(format!(
                "master key file {} has no file name",
                path.display()
            ))
        })?
        .to_string_lossy();
    let tmp = path.with_file_name(format!(
        ".{name}.{}.{:016x}.tmp",
        std::process::id(),
        OsRng.next_u64()
    ));
    let result = create_private(&tmp).and_then(|mut f| {
        f.write_all(contents)?;
        f.sync_all()
    });
    match result {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(CryptoError::io(format!("writing {}", tmp.display()), e))
        }
    }
}

fn sync_parent(path: &Path) {
    #[cfg(unix)]
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// Atomically replaces `path` with `contents` (temp file + rename), mode 0600.
fn replace_file(path: &Path, contents: &[u8]) -> Result<(), CryptoError> {
    let tmp = write_temp(path, contents)?;
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(CryptoError::io(
            format!("replacing master key file {}", path.display()),
            e,
        ));
    }
    sync_parent(path);
    Ok(())
}

/// Creates `path` with one fresh key unless it exists. The file appears complete or not
/// at all (temp file + hard link, which never replaces), so two processes starting at once
/// end up sharing whichever key won.
fn create_if_missing(path: &Path) -> Result<(), CryptoError> {
    if path.exists() {
        return Ok(());
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dir(dir).map_err(|e| {
            CryptoError::io(
                format!("creating master key directory {}", dir.display()),
                e,
            )
        })?;
    }
    let spec = LocalKms::new_keyring_spec();
    let tmp = write_temp(path, spec.as_bytes())?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        // A filesystem without hard links: exclusive create, written in one go.
        Err(_) => match create_private(path) {
            Ok(mut f) => f
                .write_all(spec.as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| {
                    CryptoError::io(format!("writing master key file {}", path.display()), e)
                })?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
            Err(e) => {
                return Err(CryptoError::io(
                    format!("creating master key file {}", path.display()),
                    e,
                ))
            }
        },
    }
    sync_parent(path);
    Ok(())
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(dir)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn b64_key(byte: u8) -> String {
        B64.encode([byte; KEY_LEN])
    }

    fn kms() -> LocalKms {
        LocalKms::from_keyring(&LocalKms::new_keyring_spec()).unwrap()
    }

    #[tokio::test]
    async fn wrap_unwrap_round_trip_and_tenant_binding() {
        let kms = kms();
        let (t, other) = (TenantId::new(), TenantId::new());
        let key = DataKey::generate();
        let wrapped = kms.wrap(t, &key).await.unwrap();
        assert_eq!(wrapped.kms, "local");
        assert_eq!(wrapped.kek_version, 1);
        assert!(!wrapped.blob.contains(&B64.encode(key.expose_secret())));
        let back = kms.unwrap(t, &wrapped).await.unwrap();
        assert_eq!(back.expose_secret(), key.expose_secret());
        assert!(matches!(
            kms.unwrap(other, &wrapped).await,
            Err(CryptoError::Decrypt)
        ));
        assert!(matches!(
            kms.rewrap(other, &wrapped).await,
            Err(CryptoError::Decrypt)
        ));
        // Serializes as plain JSON, and round trips.
        let json = serde_json::to_string(&wrapped).unwrap();
        assert_eq!(serde_json::from_str::<WrappedKey>(&json).unwrap(), wrapped);
    }

    #[tokio::test]
    async fn bad_wrapped_keys_are_refused() {
        let kms = kms();
        let t = TenantId::new();
        let wrapped = kms.wrap(t, &DataKey::generate()).await.unwrap();
        let other_kms = WrappedKey {
            kms: "transit:agentplane".into(),
            ..wrapped.clone()
        };
        let err = kms.unwrap(t, &other_kms).await.unwrap_err();
        assert!(
            matches!(&err, CryptoError::Kms(m) if m.contains("transit:agentplane")),
            "{err}"
        );
        let unknown = WrappedKey {
            kek_version: 9,
            ..wrapped.clone()
        };
        assert!(matches!(
            kms.unwrap(t, &unknown).await,
            Err(CryptoError::UnknownKeyVersion(9))
        ));
        for blob in ["", "!!!", "AAAA"] {
            let bad = WrappedKey {
                blob: blob.into(),
                ..wrapped.clone()
            };
            assert!(matches!(
                kms.unwrap(t, &bad).await,
                Err(CryptoError::Malformed)
            ));
        }
        let mut raw = B64.decode(&wrapped.blob).unwrap();
        raw[30] ^= 1;
        let tampered = WrappedKey {
            blob: B64.encode(raw),
            ..wrapped
        };
        assert!(matches!(
            kms.unwrap(t, &tampered).await,
            Err(CryptoError::Decrypt)
        ));
    }

    #[tokio::test]
    async fn rotation_rewraps_and_old_versions_still_unwrap() {
        let kms = kms();
        let t = TenantId::new();
        let key = DataKey::generate();
        let v1 = kms.wrap(t, &key).await.unwrap();
        assert_eq!(kms.rotate().await.unwrap(), 2);
        assert_eq!(kms.current_version().await.unwrap(), 2);
        assert_eq!(kms.versions(), vec![1, 2]);
        // Old wraps still open.
        let back = kms.unwrap(t, &v1).await.unwrap();
        assert_eq!(back.expose_secret(), key.expose_secret());
        let v2 = kms.rewrap(t, &v1).await.unwrap();
        assert_eq!(v2.kek_version, 2);
        assert_ne!(v2.blob, v1.blob);
        let back = kms.unwrap(t, &v2).await.unwrap();
        assert_eq!(back.expose_secret(), key.expose_secret());
        // Rewrapping a current key changes nothing; new wraps use v2.
        assert_eq!(kms.rewrap(t, &v2).await.unwrap(), v2);
        assert_eq!(kms.wrap(t, &key).await.unwrap().kek_version, 2);
        // The version is authenticated: a v1 blob relabelled v2 does not open.
        let relabelled = WrappedKey {
            kek_version: 2,
            ..v1
        };
        assert!(matches!(
            kms.unwrap(t, &relabelled).await,
            Err(CryptoError::Decrypt)
        ));
    }

    #[test]
    fn keyring_parsing() {
        let spec = format!("1:{}, 2:{}\n3:{}", b64_key(1), b64_key(2), b64_key(3));
        let kms = LocalKms::from_keyring(&spec).unwrap();
        assert_eq!(kms.versions(), vec![1, 2, 3]);

        let cases = [
            (String::new(), "no master keys"),
            (" , \n".to_owned(), "no master keys"),
            (b64_key(1), "has no ':'"),
            (format!("x:{}", b64_key(1)), "positive integer"),
            (format!("0:{}", b64_key(1)), "positive integer"),
            ("1:not*base64!".to_owned(), "version 1 is not valid base64"),
            (
                format!("1:{}", B64.encode([1u8; 16])),
                "version 1 decodes to 16 bytes, expected 32",
            ),
            (
                format!("1:{},1:{}", b64_key(1), b64_key(2)),
                "version 1 appears twice",
            ),
        ];
        for (spec, expected) in cases {
            match LocalKms::from_keyring(&spec) {
                Err(CryptoError::Config(m)) => {
                    assert!(m.contains(expected), "{spec:?}: {m}");
                    // Never echo key material.
                    assert!(!m.contains(&b64_key(1)) && !m.contains(&B64.encode([1u8; 16])));
                }
                other => panic!("{spec:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn debug_is_redacted() {
        let spec = format!("1:{}", b64_key(7));
        let kms = LocalKms::from_keyring(&spec).unwrap();
        let debug = format!("{kms:?}");
        assert!(!debug.contains(&b64_key(7)), "{debug}");
        assert!(debug.contains("versions: [1]"), "{debug}");
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn from_file_creates_once_and_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys").join("master.keys");
        let err = LocalKms::from_file(&path, false).unwrap_err();
        assert!(matches!(err, CryptoError::Io(..)), "{err}");
        assert!(err.to_string().contains("master.keys"), "{err}");

        let first = LocalKms::from_file(&path, true).unwrap();
        #[cfg(unix)]
        assert_eq!(mode(&path), 0o600);
        let contents = fs::read_to_string(&path).unwrap();
        assert!(contents.starts_with("1:"), "one v1 key");
        assert_eq!(first.versions(), vec![1]);

        let t = TenantId::new();
        let key = DataKey::generate();
        let wrapped = first.wrap(t, &key).await.unwrap();
        let second = LocalKms::from_file(&path, true).unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            contents,
            "reused, not replaced"
        );
        let back = second.unwrap(t, &wrapped).await.unwrap();
        assert_eq!(back.expose_secret(), key.expose_secret());
        // Only the key file is left behind (no temp files).
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn concurrent_creation_agrees_on_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.keys");
        let rings: Vec<Vec<u8>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        let kms = LocalKms::from_file(&path, true).unwrap();
                        let ring = kms.read();
                        ring.get(&1).unwrap().expose_secret().to_vec()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(rings.windows(2).all(|w| w[0] == w[1]));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[tokio::test]
    async fn rotate_rewrites_the_file_and_other_processes_pick_it_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.keys");
        let a = LocalKms::from_file(&path, true).unwrap();
        let b = LocalKms::from_file(&path, false).unwrap();
        assert_eq!(a.rotate().await.unwrap(), 2);
        #[cfg(unix)]
        assert_eq!(mode(&path), 0o600);
        assert_eq!(
            LocalKms::from_file(&path, false).unwrap().versions(),
            vec![1, 2]
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);

        // `b` has never seen v2, yet unwraps what `a` wrapped with it (re-reads the file).
        let t = TenantId::new();
        let key = DataKey::generate();
        let wrapped = a.wrap(t, &key).await.unwrap();
        assert_eq!(wrapped.kek_version, 2);
        assert_eq!(
            b.unwrap(t, &wrapped).await.unwrap().expose_secret(),
            key.expose_secret()
        );
        // And `b` rotating next continues at 3 instead of clobbering v2.
        assert_eq!(b.rotate().await.unwrap(), 3);
        assert_eq!(
            LocalKms::from_file(&path, false).unwrap().versions(),
            vec![1, 2, 3]
        );
        assert_eq!(
            a.unwrap(t, &wrapped).await.unwrap().expose_secret(),
            key.expose_secret()
        );
    }

    #[tokio::test]
    async fn a_keyring_without_a_file_rotates_in_memory() {
        let kms = kms();
        assert_eq!(kms.rotate().await.unwrap(), 2);
        assert_eq!(kms.rotate().await.unwrap(), 3);
        assert!(kms.path().is_none());
    }

    #[test]
    fn a_bad_key_file_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.keys");
        fs::write(&path, "1:short").unwrap();
        match LocalKms::from_file(&path, true) {
            Err(CryptoError::Config(m)) => assert!(m.contains("master.keys"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
