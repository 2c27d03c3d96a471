//! The security crate's one error type.
//!
//! No variant carries key material, plaintext or anything derived from a secret. An open
//! that fails says only that it failed: whether the key was wrong or a byte was changed is
//! not the caller's to learn (the audit log, above this crate, records the attempt).

use std::fmt;

/// What sealing, opening, parsing or key handling can fail with.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CryptoError {
    /// The bytes are not a well-formed envelope; the inner value says which rule broke.
    Malformed(MalformedEnvelope),
    /// Authentication failed: a wrong key, or any byte of the envelope changed since it was
    /// sealed. Deliberately says nothing more.
    OpenFailed,
    /// The DEK was derived for another chunk, key epoch or tenant than the envelope names.
    /// Checked before any decryption; the labels are not secret.
    DekMismatch { binding: DekBinding },
    /// The plaintext opened fine but is not the content its chunk id names: it was sealed
    /// under another chunk's id (a poisoned dedup entry).
    ChunkIdMismatch,
    /// The id key given to verify a chunk id does not fit the envelope: one given for a
    /// shared chunk, none for an isolated one, or another tenant's.
    IdKeyMismatch,
    /// The plaintext is longer than an envelope may carry.
    PlaintextTooLong { len_bytes: u64, max_bytes: u64 },
    /// The tenant-wrapped derivation parameters are longer than an envelope may carry.
    WrappedParamsTooLong { len_bytes: u64, max_bytes: u64 },
    /// Sealing parameters that contradict each other; `reason` says how.
    InvalidSealParams { reason: &'static str },
    /// The system random generator failed; no key or nonce was made.
    Random,
    /// aws-lc refused an operation that cannot fail with valid inputs.
    Internal { operation: &'static str },
}

/// Which label of a DEK disagrees with the envelope it is used on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DekBinding {
    ChunkId,
    KeyEpoch,
    Tenant,
}

/// Why bytes are not an envelope. The parser checks in this order and reports the first
/// rule that breaks, so every input has exactly one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MalformedEnvelope {
    /// Shorter than the fixed header and tag together.
    TooShort { len_bytes: u64, min_bytes: u64 },
    /// The first four bytes are not the envelope magic.
    BadMagic { found: [u8; 4] },
    /// A format version this build does not read.
    UnknownVersion { version: u16 },
    /// An algorithm id this build does not know.
    UnknownAlgorithm { algorithm: u8 },
    /// Flag bits this version does not define (`flags` holds only the unknown bits).
    UnknownFlags { flags: u8 },
    /// The reserved header field is not zero.
    NonzeroReserved,
    /// The wrapped-parameters length is over its limit.
    WrappedParamsTooLong { len_bytes: u64, max_bytes: u64 },
    /// The ciphertext length is over the chunk limit.
    CiphertextTooLong { len_bytes: u64, max_bytes: u64 },
    /// The isolated-tenant flag is set but the tenant id is nil.
    IsolatedWithoutTenant,
    /// No isolated-tenant flag, yet a tenant id, KEK epoch or wrapped parameters.
    SharedWithTenantData,
    /// The header declares more bytes than the buffer holds.
    Truncated { declared_bytes: u64, actual_bytes: u64 },
    /// The buffer holds more bytes than the header declares.
    TrailingBytes { declared_bytes: u64, actual_bytes: u64 },
}

impl From<MalformedEnvelope> for CryptoError {
    fn from(malformed: MalformedEnvelope) -> CryptoError {
        CryptoError::Malformed(malformed)
    }
}

impl fmt::Display for CryptoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use CryptoError::*;
        match self {
            Malformed(malformed) => write!(f, "malformed envelope: {malformed}"),
            OpenFailed => f.write_str("envelope failed to open"),
            DekMismatch { binding } => {
                write!(f, "the DEK was derived for another {binding} than the envelope's")
            }
            ChunkIdMismatch => f.write_str("opened chunk does not match its chunk id"),
            IdKeyMismatch => f.write_str("the id key does not fit the envelope's tenant"),
            PlaintextTooLong { len_bytes, max_bytes } => {
                write!(f, "plaintext of {len_bytes} bytes is over the {max_bytes}-byte limit")
            }
            WrappedParamsTooLong { len_bytes, max_bytes } => write!(
                f,
                "wrapped parameters of {len_bytes} bytes are over the {max_bytes}-byte limit"
            ),
            InvalidSealParams { reason } => write!(f, "invalid seal parameters: {reason}"),
            Random => f.write_str("the system random generator failed"),
            Internal { operation } => write!(f, "{operation} failed inside aws-lc"),
        }
    }
}

impl fmt::Display for DekBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DekBinding::ChunkId => "chunk id",
            DekBinding::KeyEpoch => "key epoch",
            DekBinding::Tenant => "tenant",
        })
    }
}

impl fmt::Display for MalformedEnvelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use MalformedEnvelope::*;
        match self {
            TooShort { len_bytes, min_bytes } => {
                write!(f, "{len_bytes} bytes, shorter than the {min_bytes}-byte minimum")
            }
            BadMagic { found } => write!(f, "bad magic {found:02x?}"),
            UnknownVersion { version } => write!(f, "unknown format version {version}"),
            UnknownAlgorithm { algorithm } => write!(f, "unknown algorithm id {algorithm}"),
            UnknownFlags { flags } => write!(f, "unknown flag bits {flags:#04x}"),
            NonzeroReserved => f.write_str("reserved field is not zero"),
            WrappedParamsTooLong { len_bytes, max_bytes } => write!(
                f,
                "wrapped parameters of {len_bytes} bytes are over the {max_bytes}-byte limit"
            ),
            CiphertextTooLong { len_bytes, max_bytes } => {
                write!(f, "ciphertext of {len_bytes} bytes is over the {max_bytes}-byte limit")
            }
            IsolatedWithoutTenant => f.write_str("isolated-tenant flag with a nil tenant id"),
            SharedWithTenantData => {
                f.write_str("shared envelope carries a tenant id, KEK epoch or wrapped parameters")
            }
            Truncated { declared_bytes, actual_bytes } => {
                write!(f, "header declares {declared_bytes} bytes, buffer holds {actual_bytes}")
            }
            TrailingBytes { declared_bytes, actual_bytes } => write!(
                f,
                "buffer holds {actual_bytes} bytes, header declares only {declared_bytes}"
            ),
        }
    }
}

impl std::error::Error for CryptoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CryptoError::Malformed(malformed) => Some(malformed),
            _ => None,
        }
    }
}

impl std::error::Error for MalformedEnvelope {}
