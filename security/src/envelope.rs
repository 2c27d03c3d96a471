//! The sealed envelope: how one encrypted chunk sits at rest and on the wire.
//!
//! An [`Envelope`] is made in exactly two ways, by [`Envelope::seal`] (from plaintext and a
//! DEK) and by [`Envelope::parse`] (from bytes, fully checked). Its fields are private and
//! it has no constructor from raw parts, so whoever holds an `Envelope` holds ciphertext
//! with a well-formed header: the engine can be handed nothing else.
//!
//! # Byte map (format version 1, every integer little-endian)
//!
//! ```text
//! offset    size  field               rule
//! 0         4     magic               "KSKE"
//! 4         12    nonce               random per seal, drawn by aws-lc during the seal
//! 16        2     version     u16     1
//! 18        1     algorithm   u8      1 = AES-256-GCM
//! 19        1     flags       u8      bit 0 = isolated tenant; other bits 0
//! 20        4     key_epoch   u32     epoch of the master key the DEK came from
//! 24        4     kek_epoch   u32     tenant KEK epoch of the wrapped params; 0 if shared
//! 28        32    chunk_id            SHA-256 or HMAC-SHA256 of the plaintext
//! 60        16    tenant_id           UUID; all zero if and only if shared
//! 76        2     wrapped_len u16     <= 256; 0 if shared
//! 78        2     reserved    u16     0
//! 80        4     ciphertext_len u32  <= 64 MiB; equals the plaintext length
//! 84        W     wrapped params      opaque: derivation parameters wrapped by the KEK
//! 84+W      C     ciphertext          AES-256-GCM of the plaintext
//! 84+W+C    16    tag                 GCM tag
//! ```
//!
//! The AAD is bytes `16 .. 84+W`: everything from the version to the end of the wrapped
//! parameters, so version, algorithm, flags, epochs, chunk id, tenant id, lengths and the
//! wrapped parameters are all authenticated, and an envelope spliced onto another chunk
//! id, epoch or tenant fails to open. The magic is a constant the parser checks; the nonce
//! is bound by GCM itself (another nonce gives another keystream and tag). The nonce sits
//! before the authenticated span because aws-lc's randomized-nonce AES-GCM (the sealing
//! API aws-lc-rs allows in FIPS mode: the module draws the IV) picks it inside the seal
//! call, after the AAD is fixed.

use std::fmt;
use std::ops::Deref;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, RandomizedNonceKey, UnboundKey};
use zeroize::Zeroize;

use crate::constants::{
    ALGORITHM_AES_256_GCM, CHUNK_ID_LEN, CHUNK_PLAINTEXT_MAX_BYTES, ENVELOPE_MAGIC,
    ENVELOPE_VERSION, FLAG_ISOLATED_TENANT, FLAGS_KNOWN, NONCE_LEN, TAG_LEN, TENANT_ID_LEN,
    WRAPPED_PARAMS_MAX_BYTES,
};
use crate::error::{CryptoError, DekBinding, MalformedEnvelope};
use crate::ids::{ChunkId, Tenancy, TenantId};
use crate::keys::{Dek, MasterKey, TenantKey, TenantSecret};

/// An encrypted chunk with its header; see the module's byte map.
#[derive(Clone)]
pub struct Envelope {
    /// The envelope is `bytes[start..]`: a received request's buffer can be kept whole, its
    /// own header in front (see [`Envelope::parse_owned_at`]).
    bytes: Vec<u8>,
    start: usize,
    header: Header,
}

/// What a seal needs besides the plaintext. The chunk id, key epoch and tenancy come from
/// the DEK, which was derived for exactly them, so the header cannot name another key.
#[derive(Debug, Clone, Copy)]
pub struct SealParams<'a> {
    dek: &'a Dek,
    tenant_kek_epoch: u32,
    wrapped_params: &'a [u8],
}

/// Which keys [`Envelope::seal_chunk`] uses for the chunk id and the DEK.
#[derive(Debug, Clone, Copy)]
pub enum ChunkTenant<'a> {
    /// SHA-256 id, DEK from the master key alone.
    Shared,
    /// HMAC id under `id_key`, DEK that also takes `secret`; both of the same tenant.
    Isolated { id_key: &'a TenantKey, secret: &'a TenantSecret },
}

impl<'a> SealParams<'a> {
    /// Parameters with no tenant wrapping: a shared chunk, or an isolated one whose wrapped
    /// derivation parameters are kept elsewhere.
    pub fn new(dek: &'a Dek) -> SealParams<'a> {
        SealParams { dek, tenant_kek_epoch: 0, wrapped_params: &[] }
    }

    /// Adds an isolated tenant's wrapping: the KEK epoch and the derivation parameters the
    /// key manager wrapped under that KEK (opaque here, at most
    /// [`WRAPPED_PARAMS_MAX_BYTES`]). A shared chunk cannot carry them.
    pub fn with_tenant_wrapping(self, kek_epoch: u32, wrapped_params: &'a [u8]) -> Self {
        SealParams { tenant_kek_epoch: kek_epoch, wrapped_params, ..self }
    }

    pub fn chunk_id(&self) -> ChunkId {
        self.dek.chunk_id()
    }

    pub fn key_epoch(&self) -> u32 {
        self.dek.key_epoch()
    }

    pub fn tenancy(&self) -> Tenancy {
        self.dek.tenancy()
    }

    /// The header a seal with these parameters writes, nonce still zero.
    fn header(&self, plaintext_len: usize) -> Result<Header, CryptoError> {
        let ciphertext_len = u32::try_from(plaintext_len)
            .ok()
            .filter(|&len| len <= CHUNK_PLAINTEXT_MAX_BYTES)
            .ok_or(CryptoError::PlaintextTooLong {
                len_bytes: len_u64(plaintext_len),
                max_bytes: u64::from(CHUNK_PLAINTEXT_MAX_BYTES),
            })?;
        let wrapped_params_len = u16::try_from(self.wrapped_params.len())
            .ok()
            .filter(|&len| len <= WRAPPED_PARAMS_MAX_BYTES)
            .ok_or(CryptoError::WrappedParamsTooLong {
                len_bytes: len_u64(self.wrapped_params.len()),
                max_bytes: u64::from(WRAPPED_PARAMS_MAX_BYTES),
            })?;
        let shared = self.tenancy() == Tenancy::Shared;
        if shared && (self.tenant_kek_epoch != 0 || wrapped_params_len != 0) {
            let reason = "a shared chunk's envelope carries no tenant KEK epoch or wrapping";
            return Err(CryptoError::InvalidSealParams { reason });
        }
        Ok(Header {
            nonce: [0; NONCE_LEN],
            key_epoch: self.key_epoch(),
            tenant_kek_epoch: self.tenant_kek_epoch,
            chunk_id: self.chunk_id(),
            tenancy: self.tenancy(),
            wrapped_params_len,
            ciphertext_len,
        })
    }
}

impl Envelope {
    /// Encrypts `plaintext` under the parameters' DEK with a fresh random nonce.
    ///
    /// One pass: the header and wrapped parameters are written, the plaintext is copied
    /// once into the output and encrypted there, and the tag appended. The output is
    /// allocated once at its final size. If encryption fails, the copy is zeroed.
    pub fn seal(plaintext: &[u8], params: &SealParams<'_>) -> Result<Envelope, CryptoError> {
        let declared = params.header(plaintext.len())?.declared_len();
        let envelope = Envelope::seal_into(plaintext, params, Vec::with_capacity(declared))?;
        assert_eq!(envelope.bytes.capacity(), envelope.bytes.len(), "sealing allocated once");
        Ok(envelope)
    }

    /// As [`Envelope::seal`], writing into `buffer` (cleared first; its capacity is reused),
    /// so that a writer recycling envelopes (`into_bytes`) allocates nothing per chunk. A
    /// large chunk in a fresh allocation costs a page fault per 4 KiB on every seal.
    pub fn seal_into(
        plaintext: &[u8],
        params: &SealParams<'_>,
        mut buffer: Vec<u8>,
    ) -> Result<Envelope, CryptoError> {
        let mut header = params.header(plaintext.len())?;
        let header_len = header.header_len();
        let key = aes_key(params.dek)?;
        buffer.clear();
        buffer.reserve_exact(header.declared_len());
        let mut bytes = buffer;
        header.encode(&mut bytes);
        bytes.extend_from_slice(params.wrapped_params);
        bytes.extend_from_slice(plaintext);
        let (head, body) = bytes.split_at_mut(header_len);
        let sealed = key.seal_in_place_separate_tag(Aad::from(&head[AUTHENTICATED_FROM..]), body);
        let Ok((nonce, tag)) = sealed else {
            bytes.zeroize();
            return Err(CryptoError::Internal { operation: "AES-256-GCM seal" });
        };
        header.nonce = *nonce.as_ref();
        head[NONCE_OFFSET..NONCE_OFFSET + NONCE_LEN].copy_from_slice(&header.nonce);
        bytes.extend_from_slice(tag.as_ref());
        assert_eq!(bytes.len(), header.declared_len(), "sealed envelope has its declared size");
        Ok(Envelope { bytes, start: 0, header })
    }

    /// As [`Envelope::seal`], writing the envelope into `out`, which must be exactly
    /// [`Envelope::sealed_len`] bytes: for a writer that seals straight into a device's
    /// write buffer (`Shard::put_with` in the engine). The plaintext is encrypted from where
    /// it lies into `out` (out of place), so the chunk is never copied. Returns the chunk id
    /// the envelope is bound to. If encryption fails, `out` is zeroed.
    pub fn seal_to_slice(
        plaintext: &[u8],
        params: &SealParams<'_>,
        out: &mut [u8],
    ) -> Result<ChunkId, CryptoError> {
        let mut header = params.header(plaintext.len())?;
        if out.len() != header.declared_len() {
            let reason = "the output is not the sealed envelope's size";
            return Err(CryptoError::InvalidSealParams { reason });
        }
        // Out-of-place sealing exists only on `LessSafeKey`, which takes its nonce from the
        // caller: drawn here from the system RNG, as `RandomizedNonceKey` draws its own.
        let key = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, params.dek.expose())
                .map_err(|_| CryptoError::Internal { operation: "AES-256-GCM key setup" })?,
        );
        aws_lc_rs::rand::fill(&mut header.nonce)
            .map_err(|_| CryptoError::Internal { operation: "drawing a nonce" })?;
        let mut fixed = Vec::with_capacity(FIXED_HEADER_BYTES);
        header.encode(&mut fixed);
        let (head, body_and_tag) = out.split_at_mut(header.header_len());
        let (head_fixed, head_wrapped) = head.split_at_mut(fixed.len());
        head_fixed.copy_from_slice(&fixed);
        head_wrapped.copy_from_slice(params.wrapped_params);
        let (body, tag) = body_and_tag.split_at_mut(plaintext.len());
        let nonce = Nonce::assume_unique_for_key(header.nonce);
        let aad = Aad::from(&head[AUTHENTICATED_FROM..]);
        if key.seal_out_of_place_scatter(nonce, aad, plaintext, body, &[], tag).is_err() {
            out.zeroize();
            return Err(CryptoError::Internal { operation: "AES-256-GCM seal" });
        }
        Ok(header.chunk_id)
    }

    /// Computes the chunk id and the DEK, and seals: the whole write path's crypto in one
    /// call, for tests and benchmarks. The envelope carries no tenant wrapping.
    pub fn seal_chunk(
        plaintext: &[u8],
        master: &MasterKey,
        tenant: ChunkTenant<'_>,
    ) -> Result<Envelope, CryptoError> {
        let dek = match tenant {
            ChunkTenant::Shared => Dek::derive(master, &ChunkId::of_plaintext(plaintext), None),
            ChunkTenant::Isolated { id_key, secret } => {
                if id_key.tenant() != secret.tenant() {
                    let reason = "the id key and the tenant secret belong to different tenants";
                    return Err(CryptoError::InvalidSealParams { reason });
                }
                let chunk_id = ChunkId::isolated(id_key, plaintext);
                Dek::derive(master, &chunk_id, Some(secret))
            }
        };
        Envelope::seal(plaintext, &SealParams::new(&dek))
    }

    /// Checks `data` against every rule of the byte map and keeps a copy. Never panics; any
    /// input that breaks a rule gets a [`CryptoError::Malformed`] naming the first rule.
    pub fn parse(data: &[u8]) -> Result<Envelope, CryptoError> {
        let header = Header::parse(data)?;
        Ok(Envelope { bytes: data.to_vec(), start: 0, header })
    }

    /// As [`Envelope::parse`], taking the buffer instead of copying it.
    pub fn parse_owned(bytes: Vec<u8>) -> Result<Envelope, CryptoError> {
        let header = Header::parse(&bytes)?;
        Ok(Envelope { bytes, start: 0, header })
    }

    /// As [`Envelope::parse_owned`], for an envelope that starts `start` bytes into `bytes`
    /// (a put request's payload after its own header): the buffer is kept as it is, not
    /// shifted down over its first `start` bytes. `start` past the end is malformed input
    /// like any other.
    pub fn parse_owned_at(bytes: Vec<u8>, start: usize) -> Result<Envelope, CryptoError> {
        let header = Header::parse(bytes.get(start..).unwrap_or_default())?;
        Ok(Envelope { bytes, start, header })
    }

    /// Authenticates and decrypts. The DEK's labels must be the envelope's (else
    /// [`CryptoError::DekMismatch`], before any decryption); a wrong key or any changed
    /// byte gives [`CryptoError::OpenFailed`]. The plaintext is zeroed when dropped.
    pub fn open(&self, dek: &Dek) -> Result<Plaintext, CryptoError> {
        self.check_labels(dek)?;
        let key = aes_key(dek)?;
        let sealed = &self.as_bytes()[self.header.header_len()..];
        // Opened in place in a copy (the envelope stays intact); a failed open drops the
        // copy, which zeroes whatever it decrypted.
        let mut buffer = Plaintext(Vec::with_capacity(sealed.len()));
        buffer.0.extend_from_slice(sealed);
        let nonce = Nonce::assume_unique_for_key(self.header.nonce);
        let aad = Aad::from(&self.as_bytes()[AUTHENTICATED_FROM..self.header.header_len()]);
        let plaintext_len = key
            .open_in_place(nonce, aad, &mut buffer.0[..])
            .map_err(|_| CryptoError::OpenFailed)?
            .len();
        buffer.0.truncate(plaintext_len);
        Ok(buffer)
    }

    /// Opens, then checks that the plaintext is the content the chunk id names: SHA-256
    /// for a shared chunk (`id_key` = `None`), HMAC under the tenant's id key for an
    /// isolated one. Catches an envelope sealed under another chunk's id, which GCM alone
    /// cannot (whoever holds the DEK can seal anything under it): a poisoned dedup entry.
    pub fn open_verified(
        &self,
        dek: &Dek,
        id_key: Option<&TenantKey>,
    ) -> Result<Plaintext, CryptoError> {
        match (self.header.tenancy, id_key) {
            (Tenancy::Shared, None) => {}
            (Tenancy::Isolated(tenant), Some(key)) if key.tenant() == tenant => {}
            _ => return Err(CryptoError::IdKeyMismatch),
        }
        let plaintext = self.open(dek)?;
        if !self.header.chunk_id.matches(&plaintext, id_key) {
            return Err(CryptoError::ChunkIdMismatch);
        }
        Ok(plaintext)
    }

    /// Size of the envelope of a `plaintext_len`-byte chunk with `wrapped_params_len` bytes
    /// of wrapped parameters. Saturates instead of overflowing (such sizes do not seal).
    pub const fn sealed_len(plaintext_len: usize, wrapped_params_len: usize) -> usize {
        FIXED_HEADER_BYTES
            .saturating_add(wrapped_params_len)
            .saturating_add(plaintext_len)
            .saturating_add(TAG_LEN)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[self.start..]
    }

    /// The envelope's bytes, in a buffer of their own (shifted down if the envelope was
    /// parsed at an offset).
    pub fn into_bytes(mut self) -> Vec<u8> {
        self.bytes.drain(..self.start);
        self.bytes
    }

    /// Bytes of the whole envelope. Never zero: the header alone has 84.
    #[allow(clippy::len_without_is_empty, reason = "an envelope is never empty")]
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// Bytes of the plaintext inside (GCM keeps the length).
    pub fn plaintext_len(&self) -> usize {
        usize_from_u32(self.header.ciphertext_len)
    }

    pub fn chunk_id(&self) -> ChunkId {
        self.header.chunk_id
    }

    pub fn key_epoch(&self) -> u32 {
        self.header.key_epoch
    }

    pub fn tenant(&self) -> Tenancy {
        self.header.tenancy
    }

    pub fn tenant_kek_epoch(&self) -> u32 {
        self.header.tenant_kek_epoch
    }

    /// The derivation parameters wrapped by the tenant KEK (empty if none).
    pub fn wrapped_params(&self) -> &[u8] {
        &self.as_bytes()[FIXED_HEADER_BYTES..self.header.header_len()]
    }

    fn check_labels(&self, dek: &Dek) -> Result<(), CryptoError> {
        let binding = if dek.chunk_id() != self.header.chunk_id {
            DekBinding::ChunkId
        } else if dek.key_epoch() != self.header.key_epoch {
            DekBinding::KeyEpoch
        } else if dek.tenancy() != self.header.tenancy {
            DekBinding::Tenant
        } else {
            return Ok(());
        };
        Err(CryptoError::DekMismatch { binding })
    }

    /// The header encoded again from the parsed fields, followed by the rest of the bytes:
    /// equal to `as_bytes()` exactly when parsing and encoding agree.
    pub(crate) fn reencode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.len());
        self.header.encode(&mut bytes);
        bytes.extend_from_slice(&self.as_bytes()[FIXED_HEADER_BYTES..]);
        bytes
    }
}

/// An opened chunk: derefs to its bytes, and zeroes them (and the buffer's spare capacity)
/// when dropped. Not `Zeroizing<Vec<u8>>`, whose drop zeroes byte by byte through volatile
/// writes: ~300 µs per MiB here, against ~30 µs for this bulk zeroing, which would make
/// opening twice as slow as decrypting.
pub struct Plaintext(Vec<u8>);

impl Deref for Plaintext {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Plaintext {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Plaintext {
    fn drop(&mut self) {
        self.0.as_mut_slice().zeroize();
        self.0.spare_capacity_mut().zeroize();
    }
}

impl fmt::Debug for Plaintext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plaintext").field("len", &self.0.len()).finish_non_exhaustive()
    }
}

impl AsRef<[u8]> for Envelope {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl PartialEq for Envelope {
    fn eq(&self, other: &Envelope) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Envelope {}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("chunk_id", &self.header.chunk_id)
            .field("key_epoch", &self.header.key_epoch)
            .field("tenancy", &self.header.tenancy)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

// Field offsets of the byte map, each following the last. The asserts below tie them to
// the numbers in the module doc, so the map and the code cannot drift apart.
const MAGIC_OFFSET: usize = 0;
const NONCE_OFFSET: usize = MAGIC_OFFSET + ENVELOPE_MAGIC.len();
const VERSION_OFFSET: usize = NONCE_OFFSET + NONCE_LEN;
const ALGORITHM_OFFSET: usize = VERSION_OFFSET + size_of::<u16>();
const FLAGS_OFFSET: usize = ALGORITHM_OFFSET + size_of::<u8>();
const KEY_EPOCH_OFFSET: usize = FLAGS_OFFSET + size_of::<u8>();
const KEK_EPOCH_OFFSET: usize = KEY_EPOCH_OFFSET + size_of::<u32>();
const CHUNK_ID_OFFSET: usize = KEK_EPOCH_OFFSET + size_of::<u32>();
const TENANT_ID_OFFSET: usize = CHUNK_ID_OFFSET + CHUNK_ID_LEN;
const WRAPPED_LEN_OFFSET: usize = TENANT_ID_OFFSET + TENANT_ID_LEN;
const RESERVED_OFFSET: usize = WRAPPED_LEN_OFFSET + size_of::<u16>();
const CIPHERTEXT_LEN_OFFSET: usize = RESERVED_OFFSET + size_of::<u16>();
/// Bytes of the fixed header: everything before the wrapped parameters.
const FIXED_HEADER_BYTES: usize = CIPHERTEXT_LEN_OFFSET + size_of::<u32>();
/// The authenticated span starts at the version; see the module doc.
const AUTHENTICATED_FROM: usize = VERSION_OFFSET;
/// The shortest envelope: a fixed header, no wrapped parameters, empty ciphertext, tag.
const ENVELOPE_MIN_BYTES: usize = FIXED_HEADER_BYTES + TAG_LEN;

const _: () = assert!(NONCE_OFFSET == 4);
const _: () = assert!(VERSION_OFFSET == 16);
const _: () = assert!(ALGORITHM_OFFSET == 18);
const _: () = assert!(FLAGS_OFFSET == 19);
const _: () = assert!(KEY_EPOCH_OFFSET == 20);
const _: () = assert!(KEK_EPOCH_OFFSET == 24);
const _: () = assert!(CHUNK_ID_OFFSET == 28);
const _: () = assert!(TENANT_ID_OFFSET == 60);
const _: () = assert!(WRAPPED_LEN_OFFSET == 76);
const _: () = assert!(RESERVED_OFFSET == 78);
const _: () = assert!(CIPHERTEXT_LEN_OFFSET == 80);
const _: () = assert!(FIXED_HEADER_BYTES == 84);
const _: () = assert!(ENVELOPE_MIN_BYTES == 100);
// The limits fit the fields that carry them by their types: `CHUNK_PLAINTEXT_MAX_BYTES`
// is a u32 like `ciphertext_len`, `WRAPPED_PARAMS_MAX_BYTES` a u16 like `wrapped_len`.
// The largest envelope fits a u32 and a usize, so no length computed from valid fields
// can overflow, and a u32 converts to usize without loss.
const ENVELOPE_MAX_BYTES: u64 = FIXED_HEADER_BYTES as u64
    + WRAPPED_PARAMS_MAX_BYTES as u64
    + CHUNK_PLAINTEXT_MAX_BYTES as u64
    + TAG_LEN as u64;
const _: () = assert!(ENVELOPE_MAX_BYTES <= u32::MAX as u64);
const _: () = assert!(usize::BITS >= u32::BITS);
// The nonce and tag are what aws-lc's AES-256-GCM uses.
const _: () = assert!(NONCE_LEN == aws_lc_rs::aead::NONCE_LEN);
const _: () = assert!(TAG_LEN == aws_lc_rs::aead::MAX_TAG_LEN);

/// The fixed header's fields as parsed: only valid values, in host form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    nonce: [u8; NONCE_LEN],
    key_epoch: u32,
    tenant_kek_epoch: u32,
    chunk_id: ChunkId,
    tenancy: Tenancy,
    wrapped_params_len: u16,
    ciphertext_len: u32,
}

impl Header {
    /// Appends exactly [`FIXED_HEADER_BYTES`], in byte-map order.
    fn encode(&self, out: &mut Vec<u8>) {
        let (flags, tenant_id) = match self.tenancy {
            Tenancy::Shared => (0, [0; TENANT_ID_LEN]),
            Tenancy::Isolated(tenant) => (FLAG_ISOLATED_TENANT, *tenant.as_bytes()),
        };
        let start = out.len();
        out.extend_from_slice(&ENVELOPE_MAGIC);
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&ENVELOPE_VERSION.to_le_bytes());
        out.push(ALGORITHM_AES_256_GCM);
        out.push(flags);
        out.extend_from_slice(&self.key_epoch.to_le_bytes());
        out.extend_from_slice(&self.tenant_kek_epoch.to_le_bytes());
        out.extend_from_slice(self.chunk_id.as_bytes());
        out.extend_from_slice(&tenant_id);
        out.extend_from_slice(&self.wrapped_params_len.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&self.ciphertext_len.to_le_bytes());
        assert_eq!(out.len() - start, FIXED_HEADER_BYTES, "header encodes to its fixed size");
    }

    /// Checks the rules in a fixed order (see [`MalformedEnvelope`]): minimum size, then
    /// the fixed fields one by one, then the lengths against the buffer.
    fn parse(data: &[u8]) -> Result<Header, MalformedEnvelope> {
        let too_short = MalformedEnvelope::TooShort {
            len_bytes: len_u64(data.len()),
            min_bytes: len_u64(ENVELOPE_MIN_BYTES),
        };
        if data.len() < ENVELOPE_MIN_BYTES {
            return Err(too_short);
        }
        // Cannot be `None` after the check above; handled without a panic all the same.
        let header = RawHeader::read(data).ok_or(too_short)?.validate()?;
        let (declared_bytes, actual_bytes) = (header.declared_len_u64(), len_u64(data.len()));
        if actual_bytes < declared_bytes {
            return Err(MalformedEnvelope::Truncated { declared_bytes, actual_bytes });
        }
        if actual_bytes > declared_bytes {
            return Err(MalformedEnvelope::TrailingBytes { declared_bytes, actual_bytes });
        }
        Ok(header)
    }

    /// Fixed header plus wrapped parameters: the end of the authenticated span.
    fn header_len(&self) -> usize {
        FIXED_HEADER_BYTES + usize::from(self.wrapped_params_len)
    }

    /// The envelope's whole size as the header declares it. In memory: only called on a
    /// header whose lengths passed their limits, so this cannot overflow (asserted above).
    fn declared_len(&self) -> usize {
        self.header_len() + usize_from_u32(self.ciphertext_len) + TAG_LEN
    }

    /// The same size computed from the fields alone, with checked arithmetic; saturates at
    /// `u64::MAX` instead of overflowing.
    fn declared_len_u64(&self) -> u64 {
        len_u64(FIXED_HEADER_BYTES + TAG_LEN)
            .checked_add(u64::from(self.wrapped_params_len))
            .and_then(|len| len.checked_add(u64::from(self.ciphertext_len)))
            .unwrap_or(u64::MAX)
    }
}

/// The fixed header's fields exactly as read, before any rule is checked.
struct RawHeader {
    magic: [u8; 4],
    nonce: [u8; NONCE_LEN],
    version: u16,
    algorithm: u8,
    flags: u8,
    key_epoch: u32,
    tenant_kek_epoch: u32,
    chunk_id: [u8; CHUNK_ID_LEN],
    tenant_id: [u8; TENANT_ID_LEN],
    wrapped_params_len: u16,
    reserved: u16,
    ciphertext_len: u32,
}

impl RawHeader {
    /// Reads the fields in byte-map order; `None` if `data` is shorter than the header.
    fn read(data: &[u8]) -> Option<RawHeader> {
        let mut reader = Reader { rest: data };
        // Struct fields are evaluated in the order written: byte-map order.
        Some(RawHeader {
            magic: reader.take()?,
            nonce: reader.take()?,
            version: u16::from_le_bytes(reader.take()?),
            algorithm: u8::from_le_bytes(reader.take()?),
            flags: u8::from_le_bytes(reader.take()?),
            key_epoch: u32::from_le_bytes(reader.take()?),
            tenant_kek_epoch: u32::from_le_bytes(reader.take()?),
            chunk_id: reader.take()?,
            tenant_id: reader.take()?,
            wrapped_params_len: u16::from_le_bytes(reader.take()?),
            reserved: u16::from_le_bytes(reader.take()?),
            ciphertext_len: u32::from_le_bytes(reader.take()?),
        })
    }

    fn validate(&self) -> Result<Header, MalformedEnvelope> {
        use MalformedEnvelope::*;
        if self.magic != ENVELOPE_MAGIC {
            return Err(BadMagic { found: self.magic });
        }
        if self.version != ENVELOPE_VERSION {
            return Err(UnknownVersion { version: self.version });
        }
        if self.algorithm != ALGORITHM_AES_256_GCM {
            return Err(UnknownAlgorithm { algorithm: self.algorithm });
        }
        if self.flags & !FLAGS_KNOWN != 0 {
            return Err(UnknownFlags { flags: self.flags & !FLAGS_KNOWN });
        }
        if self.reserved != 0 {
            return Err(NonzeroReserved);
        }
        if self.wrapped_params_len > WRAPPED_PARAMS_MAX_BYTES {
            let len_bytes = u64::from(self.wrapped_params_len);
            let max_bytes = u64::from(WRAPPED_PARAMS_MAX_BYTES);
            return Err(WrappedParamsTooLong { len_bytes, max_bytes });
        }
        if self.ciphertext_len > CHUNK_PLAINTEXT_MAX_BYTES {
            let len_bytes = u64::from(self.ciphertext_len);
            let max_bytes = u64::from(CHUNK_PLAINTEXT_MAX_BYTES);
            return Err(CiphertextTooLong { len_bytes, max_bytes });
        }
        Ok(Header {
            nonce: self.nonce,
            key_epoch: self.key_epoch,
            tenant_kek_epoch: self.tenant_kek_epoch,
            chunk_id: ChunkId::from_bytes(self.chunk_id),
            tenancy: self.tenancy()?,
            wrapped_params_len: self.wrapped_params_len,
            ciphertext_len: self.ciphertext_len,
        })
    }

    /// The flag and the tenant fields must tell one story: an isolated envelope names a
    /// tenant; a shared one has no tenant, KEK epoch or wrapped parameters.
    fn tenancy(&self) -> Result<Tenancy, MalformedEnvelope> {
        let tenant = TenantId::new(self.tenant_id);
        if self.flags & FLAG_ISOLATED_TENANT != 0 {
            return tenant.map(Tenancy::Isolated).ok_or(MalformedEnvelope::IsolatedWithoutTenant);
        }
        if tenant.is_some() || self.tenant_kek_epoch != 0 || self.wrapped_params_len != 0 {
            return Err(MalformedEnvelope::SharedWithTenantData);
        }
        Ok(Tenancy::Shared)
    }
}

/// A cursor over input bytes that hands out fixed-size arrays and cannot index out of
/// bounds: every read is a `split_first_chunk`, which answers `None` past the end.
struct Reader<'a> {
    rest: &'a [u8],
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.rest.split_first_chunk::<N>()?;
        self.rest = rest;
        Some(*head)
    }
}

fn aes_key(dek: &Dek) -> Result<RandomizedNonceKey, CryptoError> {
    RandomizedNonceKey::new(&AES_256_GCM, dek.expose())
        .map_err(|_| CryptoError::Internal { operation: "AES-256-GCM key setup" })
}

fn len_u64(len: usize) -> u64 {
    u64::try_from(len).unwrap_or(u64::MAX)
}

fn usize_from_u32(value: u32) -> usize {
    // Lossless: `usize` has at least 32 bits (asserted at compile time above).
    value as usize
}

#[cfg(test)]
mod tests;
