//! The key manager's error type. No variant carries key material, a root key, plaintext
//! or a secret; paths and labels (scopes, epochs) are not secret.

use std::fmt;
use std::path::PathBuf;

use crate::error::CryptoError;
use crate::ids::TenantId;
use crate::keymanager::store::{KeyScope, StoreError};

/// What a key manager operation can fail with.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyManagerError {
    /// The tenant's KEKs were crypto-shredded: nothing of the tenant can be opened again.
    TenantKeysDestroyed { tenant: TenantId },
    /// No key of this scope exists (a tenant without a KEK, a cluster not initialized).
    NoKey { scope: KeyScope },
    /// The epoch was never created, or was retired.
    UnknownEpoch { scope: KeyScope, epoch: u32 },
    /// The key exists already (create on an existing scope).
    AlreadyExists { scope: KeyScope },
    /// The current epoch cannot be retired: rotate first.
    RetireCurrent { epoch: u32 },
    /// An operation for isolated tenants on a tenant that shares dedup.
    NotIsolated { tenant: TenantId },
    /// The root key could not be loaded; `problem` says why (never the key).
    RootKey { source: String, problem: String },
    /// The root key file is readable by others than its owner.
    RootKeyPermissions { path: PathBuf, mode: u32 },
    /// A stored record does not parse, names another key than asked, or fails to open
    /// under the root key (changed bytes, or another cluster's root key).
    CorruptRecord { what: &'static str },
    /// A tenant blob failed to open (changed bytes, wrong tenant or context).
    OpenFailed,
    /// The key store refused or failed.
    Store(StoreError),
    /// Key pages could not be mlocked under [`super::MemoryLocking::Required`].
    MemoryLock { errno: &'static str },
    /// The process could not be made non-dumpable.
    NonDumpable { errno: &'static str },
    /// A cache TTL outside the allowed range.
    InvalidCacheTtl { secs: u64, min_secs: u64, max_secs: u64 },
    /// Crypto-shred refused: the tenant has a retention hold.
    RetentionHold { tenant: TenantId },
    /// Imported key material of the wrong length.
    BadKeyMaterial { len_bytes: usize },
    /// The envelope crypto failed.
    Crypto(CryptoError),
}

impl fmt::Display for KeyManagerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyManagerError::TenantKeysDestroyed { tenant } => {
                write!(f, "tenant keys destroyed (tenant {tenant} was crypto-shredded)")
            }
            KeyManagerError::NoKey { scope } => write!(f, "no key for {scope}"),
            KeyManagerError::UnknownEpoch { scope, epoch } => {
                write!(f, "no epoch {epoch} of {scope} (never created, or retired)")
            }
            KeyManagerError::AlreadyExists { scope } => write!(f, "a key for {scope} exists"),
            KeyManagerError::RetireCurrent { epoch } => {
                write!(f, "epoch {epoch} is current; rotate before retiring it")
            }
            KeyManagerError::NotIsolated { tenant } => {
                write!(f, "tenant {tenant} shares dedup and has no tenant secret")
            }
            KeyManagerError::RootKey { source, problem } => {
                write!(f, "root key from {source}: {problem}")
            }
            KeyManagerError::RootKeyPermissions { path, mode } => write!(
                f,
                "root key file {} has mode {mode:o}; it must be readable by its owner only \
                 (chmod 600)",
                path.display()
            ),
            KeyManagerError::CorruptRecord { what } => {
                write!(f, "stored key record does not open: {what}")
            }
            KeyManagerError::OpenFailed => f.write_str("sealed tenant data does not open"),
            KeyManagerError::Store(error) => write!(f, "key store: {error}"),
            KeyManagerError::MemoryLock { errno } => {
                write!(f, "cannot mlock key memory: {errno} (raise RLIMIT_MEMLOCK)")
            }
            KeyManagerError::NonDumpable { errno } => {
                write!(f, "cannot make the process non-dumpable: {errno}")
            }
            KeyManagerError::InvalidCacheTtl { secs, min_secs, max_secs } => {
                write!(f, "key cache TTL {secs} s is outside {min_secs}..={max_secs} s")
            }
            KeyManagerError::RetentionHold { tenant } => {
                write!(f, "tenant {tenant} has a retention hold; shred refused")
            }
            KeyManagerError::BadKeyMaterial { len_bytes } => {
                write!(f, "imported key material is {len_bytes} bytes, not 32")
            }
            KeyManagerError::Crypto(error) => write!(f, "{error:?}"),
        }
    }
}

impl std::error::Error for KeyManagerError {}

impl From<StoreError> for KeyManagerError {
    fn from(error: StoreError) -> KeyManagerError {
        KeyManagerError::Store(error)
    }
}

impl From<CryptoError> for KeyManagerError {
    fn from(error: CryptoError) -> KeyManagerError {
        KeyManagerError::Crypto(error)
    }
}
