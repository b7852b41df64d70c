//! Sealing of large objects (exports, backups) as a stream: RustCrypto's STREAM construction
//! (big-endian 32-bit counter, last-chunk flag) over XChaCha20-Poly1305, so neither side ever
//! holds the whole object. Truncation, reordering and tampering fail to open.
//!
//! Layout (integers big-endian):
//!
//! ```text
//! offset  len  field
//! 0       3    magic "APX"
//! 3       1    format version (1)
//! 4       4    data-key version (u32)
//! 8       19   random nonce prefix
//! 27      ...  chunks: 64 KiB of plaintext + 16-byte tag each; the last one shorter
//!              (possibly only a tag) and sealed as the last
//! ```
//!
//! Every chunk's associated data is `header || Aad::canonical_bytes()`, binding the object to
//! its tenant, kind and id exactly as [`crate::seal`] does.

use crate::seal::{Aad, DataKey, TAG_LEN};
use crate::CryptoError;
use chacha20poly1305::aead::stream::{DecryptorBE32, EncryptorBE32};
use chacha20poly1305::aead::Payload;
use chacha20poly1305::XChaCha20Poly1305;
use rand::rngs::OsRng;
use rand::RngCore;

const MAGIC: &[u8; 3] = b"APX";
const VERSION: u8 = 1;
const PREFIX_LEN: usize = 19;
/// Length of the stream header.
pub const STREAM_HEADER_LEN: usize = 3 + 1 + 4 + PREFIX_LEN;
/// Plaintext bytes per chunk.
pub const STREAM_CHUNK: usize = 64 * 1024;
const FRAME: usize = STREAM_CHUNK + TAG_LEN;

fn associated(header: &[u8], aad: &Aad) -> Vec<u8> {
    let mut a = header.to_vec();
    a.extend_from_slice(&aad.canonical_bytes());
    a
}

/// Seals a stream: [`StreamSealer::header`] first, then the output of every
/// [`StreamSealer::push`], then [`StreamSealer::finish`].
pub struct StreamSealer {
    enc: EncryptorBE32<XChaCha20Poly1305>,
    aad: Vec<u8>,
    header: Vec<u8>,
    buf: Vec<u8>,
}

impl StreamSealer {
    pub fn new(key: &DataKey, key_version: u32, aad: &Aad) -> Self {
        let mut prefix = [0u8; PREFIX_LEN];
        OsRng.fill_bytes(&mut prefix);
        let mut header = Vec::with_capacity(STREAM_HEADER_LEN);
        header.extend_from_slice(MAGIC);
        header.push(VERSION);
        header.extend_from_slice(&key_version.to_be_bytes());
        header.extend_from_slice(&prefix);
        Self {
            enc: EncryptorBE32::from_aead(key.cipher(), prefix.as_slice().into()),
            aad: associated(&header, aad),
            header,
            buf: Vec::with_capacity(STREAM_CHUNK),
        }
    }

    /// The bytes that open the sealed stream.
    pub fn header(&self) -> &[u8] {
        &self.header
    }

    /// Takes plaintext; answers the sealed bytes ready so far (whole chunks).
    pub fn push(&mut self, mut data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut out = Vec::new();
        while !data.is_empty() {
            let take = (STREAM_CHUNK - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            // A full chunk is sealed only once more data arrives: the last chunk must be
            // sealed as the last.
            if self.buf.len() == STREAM_CHUNK && !data.is_empty() {
                out.extend(self.seal_buffered()?);
            }
        }
        Ok(out)
    }

    fn seal_buffered(&mut self) -> Result<Vec<u8>, CryptoError> {
        let sealed = self
            .enc
            .encrypt_next(Payload {
                msg: &self.buf,
                aad: &self.aad,
            })
            .map_err(|_| CryptoError::Decrypt)?;
        self.buf.clear();
        Ok(sealed)
    }

    /// Seals what is buffered as the last chunk.
    pub fn finish(self) -> Result<Vec<u8>, CryptoError> {
        self.enc
            .encrypt_last(Payload {
                msg: &self.buf,
                aad: &self.aad,
            })
            .map_err(|_| CryptoError::Decrypt)
    }
}

/// Opens a stream sealed by [`StreamSealer`]: feed it the sealed bytes in pieces of any
/// size, then [`StreamOpener::finish`]. Plaintext is released a chunk at a time, only once
/// that chunk authenticated; a stream cut short fails at `finish`.
pub struct StreamOpener {
    cipher: XChaCha20Poly1305,
    aad: Aad,
    dec: Option<(DecryptorBE32<XChaCha20Poly1305>, Vec<u8>)>,
    buf: Vec<u8>,
}

impl StreamOpener {
    pub fn new(key: &DataKey, aad: Aad) -> Self {
        Self {
            cipher: key.cipher(),
            aad,
            dec: None,
            buf: Vec::new(),
        }
    }

    /// The data-key version named by a sealed stream's header (to pick the key).
    pub fn key_version(header: &[u8]) -> Result<u32, CryptoError> {
        if header.len() < STREAM_HEADER_LEN || &header[..3] != MAGIC || header[3] != VERSION {
            return Err(CryptoError::Malformed);
        }
        let mut v = [0u8; 4];
        v.copy_from_slice(&header[4..8]);
        Ok(u32::from_be_bytes(v))
    }

    pub fn push(&mut self, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        if self.dec.is_none() {
            if self.buf.len() < STREAM_HEADER_LEN {
                return Ok(out);
            }
            Self::key_version(&self.buf)?;
            let header: Vec<u8> = self.buf.drain(..STREAM_HEADER_LEN).collect();
            let dec = DecryptorBE32::from_aead(self.cipher.clone(), header[8..].into());
            self.dec = Some((dec, associated(&header, &self.aad)));
        }
        let Some((dec, aad)) = self.dec.as_mut() else {
            return Ok(out);
        };
        // Keep at least one byte back: a frame is known not to be the last only when more
        // bytes follow it.
        while self.buf.len() > FRAME {
            let plain = dec
                .decrypt_next(Payload {
                    msg: &self.buf[..FRAME],
                    aad,
                })
                .map_err(|_| CryptoError::Decrypt)?;
            self.buf.drain(..FRAME);
            out.extend(plain);
        }
        Ok(out)
    }

    /// Opens the last chunk; fails if the stream was cut short or extended.
    pub fn finish(self) -> Result<Vec<u8>, CryptoError> {
        let (dec, aad) = self.dec.ok_or(CryptoError::Malformed)?;
        dec.decrypt_last(Payload {
            msg: &self.buf,
            aad: &aad,
        })
        .map_err(|_| CryptoError::Decrypt)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use agentplane_core::TenantId;

    fn seal_all(key: &DataKey, aad: &Aad, data: &[u8], piece: usize) -> Vec<u8> {
        let mut s = StreamSealer::new(key, 3, aad);
        let mut out = s.header().to_vec();
        for c in data.chunks(piece.max(1)) {
            out.extend(s.push(c).unwrap());
        }
        out.extend(s.finish().unwrap());
        out
    }

    fn open_all(
        key: &DataKey,
        aad: &Aad,
        sealed: &[u8],
        piece: usize,
    ) -> Result<Vec<u8>, CryptoError> {
        let mut o = StreamOpener::new(key, aad.clone());
        let mut out = Vec::new();
        for c in sealed.chunks(piece.max(1)) {
            out.extend(o.push(c)?);
        }
        out.extend(o.finish()?);
        Ok(out)
    }

    #[test]
    fn round_trips_at_every_boundary_and_piece_size() {
        let key = DataKey::generate();
        let aad = Aad::new(TenantId::new(), "export", "e1");
        for len in [
            0,
            1,
            STREAM_CHUNK - 1,
            STREAM_CHUNK,
            STREAM_CHUNK + 1,
            3 * STREAM_CHUNK,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            for piece in [1000, STREAM_CHUNK, 7 * STREAM_CHUNK] {
                let sealed = seal_all(&key, &aad, &data, piece);
                assert_eq!(StreamOpener::key_version(&sealed).unwrap(), 3);
                for opiece in [999, FRAME, sealed.len()] {
                    assert_eq!(
                        open_all(&key, &aad, &sealed, opiece).unwrap(),
                        data,
                        "len {len}"
                    );
                }
            }
        }
    }

    #[test]
    fn tampering_truncation_and_another_place_fail() {
        let key = DataKey::generate();
        let tenant = TenantId::new();
        let aad = Aad::new(tenant, "export", "e1");
        let data = vec![7u8; 2 * STREAM_CHUNK + 10];
        let sealed = seal_all(&key, &aad, &data, 4096);
        let mut flipped = sealed.clone();
        flipped[STREAM_HEADER_LEN + 5] ^= 1;
        assert!(open_all(&key, &aad, &flipped, 4096).is_err());
        // Cut after the first whole chunk: the rest is missing, the "last" flag too.
        let cut = &sealed[..STREAM_HEADER_LEN + FRAME];
        assert!(open_all(&key, &aad, cut, 4096).is_err());
        assert!(open_all(&key, &aad, &sealed[..sealed.len() - 1], 4096).is_err());
        let other_object = Aad::new(tenant, "export", "e2");
        assert!(open_all(&key, &other_object, &sealed, 4096).is_err());
        let other_tenant = Aad::new(TenantId::new(), "export", "e1");
        assert!(open_all(&key, &other_tenant, &sealed, 4096).is_err());
        assert!(open_all(&DataKey::generate(), &aad, &sealed, 4096).is_err());
    }
}
