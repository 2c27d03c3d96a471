//! The key manager: the key store (master-key epochs, tenant KEKs, isolated-tenant
//! secrets) sealed under a root key, crypto-shred, the cache of unwrapped keys, the
//! tamper-evident audit log, the re-sealer of old chunks, and the KES-style service that
//! decides who may call what.
//!
//! - [`root`]: where the root key comes from ([`RootSealer`]: a 0600 file, an env var, or
//!   an external KMS hook) and what it seals;
//! - [`record`](self): the key record byte map, each record sealed under the root key
//!   with its name, kind and epoch as AAD;
//! - [`KeyStoreBackend`]: the persistent state (the consensus state machine in a cluster,
//!   [`MemoryKeyStore`] in tests), which never sees a key;
//! - [`KeyManager`]: generate, rotate, retire, import, shred; unwrapped keys cached on
//!   mlocked pages for a bounded TTL in a non-dumpable process;
//! - [`AuditLog`]: append-only records chained by hash and MACed under the root key;
//!   `verify`, tenant export, the cluster admin's anonymous view;
//! - [`Resealer`]: moves chunks sealed under old master-key epochs to the current one,
//!   in steps that can be paused and resumed;
//! - [`KeyService`]: the KES-style API (`/v1/key/...`, `/v1/policy/...`,
//!   `/v1/identity/...`, `/v1/key/status`) behind [`crate::authz::Authorizer`], every call
//!   audited.
//!
//! What it does not do: network I/O (the gateway serves [`KeyService`] over mTLS), or
//! read the clock except through [`Clock`] (the cache) and the caller's `now_unix_s`.
//!
//! Invariants:
//! - key bytes exist only in `Zeroizing` buffers and on [`locked`] pages; no error, log
//!   line, `Debug` output or audit record holds one;
//! - a stored record opens only as the key and epoch it was sealed for;
//! - after a shred, every read of the tenant's keys answers
//!   [`KeyManagerError::TenantKeysDestroyed`] once the cache TTL has passed (at once on
//!   the node that shredded), and the store refuses new keys for the tenant.

mod audit_log;
mod error;
mod fetched;
mod locked;
mod manager;
mod record;
mod reseal;
mod root;
mod service;
mod store;

#[cfg(test)]
mod tests;

pub use crate::clock::{Clock, ManualClock, SystemClock};
pub use audit_log::{
    Appended, AuditEntry, AuditKind, AuditLog, AuditOutcome, AuditVerifyError, ChainHead,
    ExportedRecord,
};
pub use error::KeyManagerError;
pub use fetched::FetchedMasterKeys;
pub use locked::{
    MemoryLocking, make_process_non_dumpable, mlock_failures, process_is_non_dumpable,
};
pub use manager::{
    CACHE_TTL_DEFAULT_SECS, CACHE_TTL_MAX_SECS, CACHE_TTL_MIN_SECS, KeyManager, KeyManagerConfig,
    KeyManagerStatus, NoRetentionHolds, RetentionHolds,
};
pub use reseal::{
    ChunkSource, ChunkSourceError, ResealError, ResealKeys, ResealProgress, Resealer,
};
pub use root::{
    ENV_ROOT_KEY, ExternalKms, KmsClient, LocalRootKey, RootSealer, create_root_key_file,
    root_key_path,
};
pub use service::{KeyReply, KeyRequest, KeyService, ServiceError, tenant_of_org};
pub use store::{KeyScope, KeyStoreBackend, MemoryKeyStore, StoreError, StoredAudit};
