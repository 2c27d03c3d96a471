//! Where the key manager's state lives: the [`KeyStoreBackend`] trait, which the consensus
//! crate implements over its replicated state machine (`kiseki_consensus::keystore`), and
//! [`MemoryKeyStore`], an in-process implementation with the same rules for tests and
//! single-process tools.
//!
//! The backend stores only sealed key records and audit records; it never sees a key.
//! Its rules, which every implementation keeps (the consensus one on every node, when a
//! command is applied):
//! - an epoch is recorded only as exactly one past the scope's current one (the first is
//!   1), so two racing rotations cannot both win;
//! - a tenant whose keys were destroyed never gets a key again; its records are gone;
//! - the current epoch cannot be retired;
//! - an audit record is appended only at the sequence number the caller expects (the
//!   next one), so a record's predecessor is the one its hash names.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::ids::TenantId;

/// Whose key: the cluster's master key, or one tenant's KEK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyScope {
    System,
    Tenant(TenantId),
}

impl fmt::Display for KeyScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyScope::System => f.write_str("the system master key"),
            KeyScope::Tenant(tenant) => write!(f, "tenant {tenant}'s KEK"),
        }
    }
}

/// Why the store refused or failed. A refusal changed nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreError {
    /// The state moved on (an epoch or audit sequence that is no longer the next one):
    /// re-read and retry.
    Conflict(String),
    /// The command does not fit the state (destroyed tenant, current epoch, unknown one).
    Refused(String),
    /// The store could not answer (no leader, I/O); the outcome may be unknown.
    Unavailable(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Conflict(why) => write!(f, "conflict: {why}"),
            StoreError::Refused(why) => write!(f, "refused: {why}"),
            StoreError::Unavailable(why) => write!(f, "unavailable: {why}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// One stored audit record: its sequence number (from 1), the tenant it concerns (none
/// for a system record) and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAudit {
    pub sequence: u64,
    pub tenant: Option<TenantId>,
    pub bytes: Vec<u8>,
}

/// The key manager's persistent state; see the module's rules.
pub trait KeyStoreBackend {
    /// Records `epoch` of `scope` (a key record sealed under the root key).
    fn advance_epoch(
        &mut self,
        scope: KeyScope,
        epoch: u32,
        record: Vec<u8>,
    ) -> Result<(), StoreError>;
    /// Removes an old epoch's record.
    fn retire_epoch(&mut self, scope: KeyScope, epoch: u32) -> Result<(), StoreError>;
    /// Removes every KEK record of the tenant and marks it destroyed, for good.
    fn destroy_tenant_keys(&mut self, tenant: TenantId) -> Result<(), StoreError>;
    /// The newest epoch of `scope`; `None` before the first.
    fn current_epoch(&self, scope: KeyScope) -> Result<Option<u32>, StoreError>;
    /// The record of one epoch; `None` if never created or retired.
    fn key_record(&self, scope: KeyScope, epoch: u32) -> Result<Option<Vec<u8>>, StoreError>;
    fn keys_destroyed(&self, tenant: TenantId) -> Result<bool, StoreError>;
    /// Appends an audit record at `sequence`, which must be the next one.
    fn append_audit(
        &mut self,
        sequence: u64,
        tenant: Option<TenantId>,
        bytes: Vec<u8>,
    ) -> Result<(), StoreError>;
    /// Appends consecutive audit records from `first`, in order, stopping at the first
    /// that fails: `Err((n, error))` says `n` landed before it. This default appends one at
    /// a time; a store whose writes are round trips writes the run together.
    fn append_audit_run(
        &mut self,
        first: u64,
        records: Vec<(Option<TenantId>, Vec<u8>)>,
    ) -> Result<(), (usize, StoreError)> {
        for (offset, (tenant, bytes)) in records.into_iter().enumerate() {
            self.append_audit(first + offset as u64, tenant, bytes).map_err(|e| (offset, e))?;
        }
        Ok(())
    }
    /// The sequence number the next audit record gets (1 for an empty log).
    fn audit_next(&self) -> Result<u64, StoreError>;
    fn audit_record(&self, sequence: u64) -> Result<Option<StoredAudit>, StoreError>;
    /// Replaces the key service's policies (sealed under the root key).
    fn put_policies(&mut self, sealed: Vec<u8>) -> Result<(), StoreError>;
    /// The policies last stored; `None` before the first.
    fn policies(&self) -> Result<Option<Vec<u8>>, StoreError>;
}

/// The key store in this process's memory, keeping every rule of the trait.
#[derive(Debug, Default, Clone)]
pub struct MemoryKeyStore {
    records: BTreeMap<(KeyScope, u32), Vec<u8>>,
    current: BTreeMap<KeyScope, u32>,
    destroyed: BTreeSet<TenantId>,
    audit: Vec<StoredAudit>,
    /// Kept apart from the records, as the consensus state keeps its counter in its own
    /// row: removing the last record does not make it go back.
    audit_appended: u64,
    policies: Option<Vec<u8>>,
}

impl MemoryKeyStore {
    pub fn new() -> MemoryKeyStore {
        MemoryKeyStore::default()
    }

    /// Every stored byte, for tests that look for secrets in what was stored.
    pub fn all_bytes(&self) -> Vec<u8> {
        let mut bytes: Vec<u8> = self.records.values().flatten().copied().collect();
        bytes.extend(self.audit.iter().flat_map(|record| record.bytes.iter().copied()));
        bytes
    }

    /// The audit log as stored, to tamper with in tests (what a disk editor could do).
    pub fn audit_mut(&mut self) -> &mut Vec<StoredAudit> {
        &mut self.audit
    }
}

impl KeyStoreBackend for MemoryKeyStore {
    fn advance_epoch(
        &mut self,
        scope: KeyScope,
        epoch: u32,
        record: Vec<u8>,
    ) -> Result<(), StoreError> {
        if let KeyScope::Tenant(tenant) = scope
            && self.destroyed.contains(&tenant)
        {
            return Err(StoreError::Refused("tenant keys destroyed".into()));
        }
        let current = self.current.get(&scope).copied().unwrap_or(0);
        if current.checked_add(1) != Some(epoch) {
            return Err(StoreError::Conflict("key epoch is not the next one".into()));
        }
        self.records.insert((scope, epoch), record);
        self.current.insert(scope, epoch);
        Ok(())
    }

    fn retire_epoch(&mut self, scope: KeyScope, epoch: u32) -> Result<(), StoreError> {
        if self.current.get(&scope) == Some(&epoch) {
            return Err(StoreError::Refused("the current epoch cannot be retired".into()));
        }
        match self.records.remove(&(scope, epoch)) {
            Some(_) => Ok(()),
            None => Err(StoreError::Refused("no such key epoch".into())),
        }
    }

    fn destroy_tenant_keys(&mut self, tenant: TenantId) -> Result<(), StoreError> {
        if !self.destroyed.insert(tenant) {
            return Err(StoreError::Refused("tenant keys already destroyed".into()));
        }
        let scope = KeyScope::Tenant(tenant);
        self.records.retain(|(record_scope, _), _| *record_scope != scope);
        self.current.remove(&scope);
        Ok(())
    }

    fn current_epoch(&self, scope: KeyScope) -> Result<Option<u32>, StoreError> {
        Ok(self.current.get(&scope).copied())
    }

    fn key_record(&self, scope: KeyScope, epoch: u32) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.records.get(&(scope, epoch)).cloned())
    }

    fn keys_destroyed(&self, tenant: TenantId) -> Result<bool, StoreError> {
        Ok(self.destroyed.contains(&tenant))
    }

    fn append_audit(
        &mut self,
        sequence: u64,
        tenant: Option<TenantId>,
        bytes: Vec<u8>,
    ) -> Result<(), StoreError> {
        if sequence != self.audit_next()? {
            return Err(StoreError::Conflict("audit sequence is not the next one".into()));
        }
        self.audit.push(StoredAudit { sequence, tenant, bytes });
        self.audit_appended += 1;
        Ok(())
    }

    fn audit_next(&self) -> Result<u64, StoreError> {
        Ok(self.audit_appended + 1)
    }

    /// The record stored at position `sequence` (what a table keyed by sequence returns,
    /// whatever sequence number the record's own bytes claim).
    fn audit_record(&self, sequence: u64) -> Result<Option<StoredAudit>, StoreError> {
        let index = usize::try_from(sequence.wrapping_sub(1)).unwrap_or(usize::MAX);
        Ok(self.audit.get(index).map(|record| StoredAudit { sequence, ..record.clone() }))
    }

    fn put_policies(&mut self, sealed: Vec<u8>) -> Result<(), StoreError> {
        self.policies = Some(sealed);
        Ok(())
    }

    fn policies(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.policies.clone())
    }
}

/// One store shared by several key managers in a process (the "nodes" of a test, or a
/// service and a re-sealer): each call takes the lock once.
impl KeyStoreBackend for std::sync::Arc<std::sync::Mutex<MemoryKeyStore>> {
    fn advance_epoch(
        &mut self,
        scope: KeyScope,
        epoch: u32,
        record: Vec<u8>,
    ) -> Result<(), StoreError> {
        lock(self).advance_epoch(scope, epoch, record)
    }

    fn retire_epoch(&mut self, scope: KeyScope, epoch: u32) -> Result<(), StoreError> {
        lock(self).retire_epoch(scope, epoch)
    }

    fn destroy_tenant_keys(&mut self, tenant: TenantId) -> Result<(), StoreError> {
        lock(self).destroy_tenant_keys(tenant)
    }

    fn current_epoch(&self, scope: KeyScope) -> Result<Option<u32>, StoreError> {
        lock(self).current_epoch(scope)
    }

    fn key_record(&self, scope: KeyScope, epoch: u32) -> Result<Option<Vec<u8>>, StoreError> {
        lock(self).key_record(scope, epoch)
    }

    fn keys_destroyed(&self, tenant: TenantId) -> Result<bool, StoreError> {
        lock(self).keys_destroyed(tenant)
    }

    fn append_audit(
        &mut self,
        sequence: u64,
        tenant: Option<TenantId>,
        bytes: Vec<u8>,
    ) -> Result<(), StoreError> {
        lock(self).append_audit(sequence, tenant, bytes)
    }

    fn audit_next(&self) -> Result<u64, StoreError> {
        lock(self).audit_next()
    }

    fn audit_record(&self, sequence: u64) -> Result<Option<StoredAudit>, StoreError> {
        lock(self).audit_record(sequence)
    }

    fn put_policies(&mut self, sealed: Vec<u8>) -> Result<(), StoreError> {
        lock(self).put_policies(sealed)
    }

    fn policies(&self) -> Result<Option<Vec<u8>>, StoreError> {
        lock(self).policies()
    }
}

fn lock(store: &std::sync::Mutex<MemoryKeyStore>) -> std::sync::MutexGuard<'_, MemoryKeyStore> {
    store.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
