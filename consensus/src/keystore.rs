//! The key manager's store over a metadata group: `kiseki_security::keymanager`'s
//! [`KeyStoreBackend`] kept in the replicated state machine, with the durability of data
//! metadata.
//!
//! Writes are proposals (`AdvanceKeyEpoch`, `RetireKeyEpoch`, `DestroyTenantKeys`,
//! `AppendAuditAt`, `AppendAuditRun`, `PutKeyPolicies`), checked for shape and against the
//! leader's state before they are proposed and again when applied; a refused one changes
//! nothing. Reads are this node's applied state (`local_view`): on a follower they may lag
//! the leader by the entries not yet applied, which the key manager's cache TTL already
//! allows for.
//!
//! The trait is synchronous and a proposal is async: each write blocks on the group's
//! runtime ([`tokio::runtime::Handle::block_on`]). Call it from a thread that is not one
//! of that runtime's workers (`spawn_blocking`, or a thread of its own).
//!
//! Scope: one group holds every key and audit record (a one-shard map, as on a single
//! node). With more shards, each tenant's keys and audit records live in its own shard
//! and each shard keeps its own audit chain; routing this store per shard is still to do.

use std::sync::Arc;

use kiseki_security::TenantId as SecurityTenantId;
use kiseki_security::keymanager::{KeyScope, KeyStoreBackend, StoreError, StoredAudit};
use tokio::runtime::Handle;

use crate::command::{
    AuditRecord, AuditScope, Command, KeyScope as StateKeyScope, Sealed, TenantId,
};
use crate::constants::{AUDIT_RUN_RECORDS_MAX, COMMAND_MAX_BYTES};
use crate::error::{ConsensusError, Rejection};
use crate::group::MetadataGroup;
use crate::state::{AUDIT_SEQUENCE_NOT_NEXT, KEY_EPOCH_NOT_NEXT};
use crate::view::StateView;

/// Record bytes in one `AppendAuditRun` at most: half a command, leaving room for the rest
/// of its encoding.
const AUDIT_RUN_BYTES_MAX: usize = COMMAND_MAX_BYTES / 2;

/// The key store in one metadata group; see the module documentation.
#[derive(Debug, Clone)]
pub struct ConsensusKeyStore {
    group: Arc<MetadataGroup>,
    runtime: Handle,
}

impl ConsensusKeyStore {
    pub fn new(group: Arc<MetadataGroup>, runtime: Handle) -> ConsensusKeyStore {
        ConsensusKeyStore { group, runtime }
    }

    fn propose(&self, command: Command) -> Result<(), StoreError> {
        // Checked on the leader's state first: a command the state refuses is never
        // proposed (the group repeats the check when it applies the entry).
        let view = self.view()?;
        view.check(&command).map_err(store_error)?;
        self.runtime.block_on(self.group.propose(command)).map(|_| ()).map_err(store_error)
    }

    fn view(&self) -> Result<StateView, StoreError> {
        self.group.local_view().map_err(store_error)
    }
}

impl KeyStoreBackend for ConsensusKeyStore {
    fn advance_epoch(
        &mut self,
        scope: KeyScope,
        epoch: u32,
        record: Vec<u8>,
    ) -> Result<(), StoreError> {
        let scope = state_scope(scope);
        self.propose(Command::AdvanceKeyEpoch { scope, epoch, sealed_key: Sealed(record) })
    }

    fn retire_epoch(&mut self, scope: KeyScope, epoch: u32) -> Result<(), StoreError> {
        self.propose(Command::RetireKeyEpoch { scope: state_scope(scope), epoch })
    }

    fn destroy_tenant_keys(&mut self, tenant: SecurityTenantId) -> Result<(), StoreError> {
        self.propose(Command::DestroyTenantKeys { tenant: TenantId(*tenant.as_bytes()) })
    }

    fn current_epoch(&self, scope: KeyScope) -> Result<Option<u32>, StoreError> {
        let newest = self.view()?.key_epoch(&state_scope(scope)).map_err(store_error)?;
        Ok(newest.map(|(epoch, _)| epoch))
    }

    fn key_record(&self, scope: KeyScope, epoch: u32) -> Result<Option<Vec<u8>>, StoreError> {
        let sealed = self.view()?.key_epoch_at(&state_scope(scope), epoch).map_err(store_error)?;
        Ok(sealed.map(|sealed| sealed.0))
    }

    fn keys_destroyed(&self, tenant: SecurityTenantId) -> Result<bool, StoreError> {
        self.view()?.keys_destroyed(&TenantId(*tenant.as_bytes())).map_err(store_error)
    }

    fn append_audit(
        &mut self,
        sequence: u64,
        tenant: Option<SecurityTenantId>,
        bytes: Vec<u8>,
    ) -> Result<(), StoreError> {
        let scope = audit_scope(tenant);
        self.propose(Command::AppendAuditAt { scope, sequence, sealed_record: Sealed(bytes) })
    }

    /// The records as `AppendAuditRun` commands, each applied whole or not at all: one
    /// commit for up to `AUDIT_RUN_RECORDS_MAX` records, where one at a time took a commit
    /// (and an fsync) each. A run larger than a command may hold goes as several, each
    /// proposed once the one before it landed.
    fn append_audit_run(
        &mut self,
        first: u64,
        records: Vec<(Option<SecurityTenantId>, Vec<u8>)>,
    ) -> Result<(), (usize, StoreError)> {
        let mut landed = 0;
        let mut piece: Vec<AuditRecord> = Vec::new();
        let mut piece_bytes = 0;
        let mut records = records.into_iter().peekable();
        while let Some((tenant, record)) = records.next() {
            piece_bytes += record.len();
            piece.push(AuditRecord { scope: audit_scope(tenant), sealed_record: Sealed(record) });
            let next_fits = records.peek().is_some_and(|(_, next)| {
                piece.len() < AUDIT_RUN_RECORDS_MAX
                    && piece_bytes + next.len() <= AUDIT_RUN_BYTES_MAX
            });
            if !next_fits {
                let count = piece.len();
                let first = first + landed as u64;
                let command =
                    Command::AppendAuditRun { first, records: std::mem::take(&mut piece) };
                self.propose(command).map_err(|e| (landed, e))?;
                landed += count;
                piece_bytes = 0;
            }
        }
        Ok(())
    }

    fn audit_next(&self) -> Result<u64, StoreError> {
        self.view()?.audit_next().map_err(store_error)
    }

    fn audit_record(&self, sequence: u64) -> Result<Option<StoredAudit>, StoreError> {
        let Some(record) = self.view()?.audit_record(sequence).map_err(store_error)? else {
            return Ok(None);
        };
        let tenant = match record.scope {
            AuditScope::System => None,
            AuditScope::Tenant(tenant) => Some(
                SecurityTenantId::new(tenant.0)
                    .ok_or_else(|| StoreError::Unavailable("nil tenant in an audit row".into()))?,
            ),
        };
        Ok(Some(StoredAudit { sequence, tenant, bytes: record.sealed_record.0 }))
    }

    fn put_policies(&mut self, sealed: Vec<u8>) -> Result<(), StoreError> {
        self.propose(Command::PutKeyPolicies { sealed_policies: Sealed(sealed) })
    }

    fn policies(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let sealed = self.view()?.key_policies().map_err(store_error)?;
        Ok(sealed.map(|sealed| sealed.0))
    }
}

fn audit_scope(tenant: Option<SecurityTenantId>) -> AuditScope {
    match tenant {
        None => AuditScope::System,
        Some(tenant) => AuditScope::Tenant(TenantId(*tenant.as_bytes())),
    }
}

fn state_scope(scope: KeyScope) -> StateKeyScope {
    match scope {
        KeyScope::System => StateKeyScope::System,
        KeyScope::Tenant(tenant) => StateKeyScope::Tenant(TenantId(*tenant.as_bytes())),
    }
}

/// A racing writer's refusal is a conflict (re-read and retry); the state's other
/// refusals are final; everything else leaves the outcome to the caller to find out.
fn store_error(error: ConsensusError) -> StoreError {
    match error {
        ConsensusError::Rejected(Rejection::Conflict(why))
            if why == KEY_EPOCH_NOT_NEXT || why == AUDIT_SEQUENCE_NOT_NEXT =>
        {
            StoreError::Conflict(why.into_owned())
        }
        ConsensusError::Rejected(rejection) => StoreError::Refused(rejection.to_string()),
        other => StoreError::Unavailable(other.to_string()),
    }
}
