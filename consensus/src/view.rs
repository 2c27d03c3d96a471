//! A read-only view of a group's applied state, taken in one read transaction: every read
//! through one view sees the same applied log id.

use crate::command::{ChunkId, Command, KeyScope, Manifest, Part, Sealed, TenantId, UploadId};
use crate::error::ConsensusError;
use crate::state::{
    AuditRecord, CredentialRecord, LazyTable, SNAPSHOT_TABLES, StateError, Tables, TenantRecord,
    UploadRecord,
};
use crate::types::LogId;
use redb::ReadableTable;

/// One row of a metadata table: the table's position in snapshots, the key, the value.
pub type Row = (usize, Vec<u8>, Vec<u8>);

/// The applied state of one group on one node, frozen at the moment the view was taken.
pub struct StateView {
    tables: Tables<LazyTable>,
}

impl std::fmt::Debug for StateView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateView").finish_non_exhaustive()
    }
}

fn storage(error: StateError) -> ConsensusError {
    match error {
        StateError::Rejected(rejection) => ConsensusError::Rejected(rejection),
        StateError::Store(why) => ConsensusError::Storage(why),
    }
}

impl StateView {
    pub(crate) fn new(tables: Tables<LazyTable>) -> StateView {
        StateView { tables }
    }

    pub fn tenant(&self, tenant: &TenantId) -> Result<Option<TenantRecord>, ConsensusError> {
        self.tables.tenant(tenant).map_err(storage)
    }

    pub fn bucket_exists(&self, tenant: &TenantId, bucket: &str) -> Result<bool, ConsensusError> {
        self.tables.bucket_exists(tenant, bucket).map_err(storage)
    }

    /// The tenant holding a bucket of this name, if any (bucket names are one namespace).
    pub fn bucket_owner(&self, bucket: &str) -> Result<Option<TenantId>, ConsensusError> {
        self.tables.bucket_owner(bucket).map_err(storage)
    }

    /// The tenant's bucket names, in byte order.
    pub fn buckets(&self, tenant: &TenantId) -> Result<Vec<String>, ConsensusError> {
        self.tables.buckets(tenant).map_err(storage)
    }

    /// Up to `limit` objects of a bucket whose keys start with `prefix` and sort after
    /// `after`, in byte order of their keys (S3's listing order).
    pub fn objects(
        &self,
        tenant: &TenantId,
        bucket: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Manifest)>, ConsensusError> {
        self.tables.objects(tenant, bucket, prefix, after, limit).map_err(storage)
    }

    pub fn object(
        &self,
        tenant: &TenantId,
        bucket: &str,
        key: &[u8],
    ) -> Result<Option<Manifest>, ConsensusError> {
        self.tables.object(tenant, bucket, key).map_err(storage)
    }

    pub fn upload(
        &self,
        tenant: &TenantId,
        upload: &UploadId,
    ) -> Result<Option<UploadRecord>, ConsensusError> {
        self.tables.upload(tenant, upload).map_err(storage)
    }

    pub fn part(
        &self,
        tenant: &TenantId,
        upload: &UploadId,
        number: u16,
    ) -> Result<Option<Part>, ConsensusError> {
        self.tables.part(tenant, upload, number).map_err(storage)
    }

    /// The tenant's open uploads, in upload-id order.
    pub fn uploads(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<(UploadId, UploadRecord)>, ConsensusError> {
        self.tables.uploads(tenant).map_err(storage)
    }

    /// Up to `limit` parts of an upload numbered above `after`, in number order.
    pub fn parts(
        &self,
        tenant: &TenantId,
        upload: &UploadId,
        after: u16,
        limit: usize,
    ) -> Result<Vec<(u16, Part)>, ConsensusError> {
        self.tables.parts(tenant, upload, after, limit).map_err(storage)
    }

    pub fn credential(
        &self,
        access_key_id: &str,
    ) -> Result<Option<CredentialRecord>, ConsensusError> {
        self.tables.credential(access_key_id).map_err(storage)
    }

    /// Up to `limit` tenants whose ids sort after `after`, in id order.
    pub fn tenants(
        &self,
        after: Option<&TenantId>,
        limit: usize,
    ) -> Result<Vec<(TenantId, TenantRecord)>, ConsensusError> {
        self.tables.tenants(after, limit).map_err(storage)
    }

    /// Up to `limit` access keys of `tenant`, in access-key order (a scan of every
    /// credential: they are keyed by access key).
    pub fn credentials_of(
        &self,
        tenant: &TenantId,
        limit: usize,
    ) -> Result<Vec<(String, CredentialRecord)>, ConsensusError> {
        self.tables.credentials_of(tenant, limit).map_err(storage)
    }

    pub fn chunk_refs(&self, chunk: &ChunkId) -> Result<u64, ConsensusError> {
        self.tables.chunk_refs(chunk).map_err(storage)
    }

    /// The newest epoch of a key and its sealed material.
    pub fn key_epoch(&self, scope: &KeyScope) -> Result<Option<(u32, Sealed)>, ConsensusError> {
        self.tables.key_epoch(scope).map_err(storage)
    }

    /// The sealed material of one epoch of a key; `None` if never created or retired.
    pub fn key_epoch_at(
        &self,
        scope: &KeyScope,
        epoch: u32,
    ) -> Result<Option<Sealed>, ConsensusError> {
        self.tables.key_epoch_at(scope, epoch).map_err(storage)
    }

    /// True once the tenant's keys were destroyed (crypto-shred).
    pub fn keys_destroyed(&self, tenant: &TenantId) -> Result<bool, ConsensusError> {
        self.tables.keys_destroyed(tenant).map_err(storage)
    }

    /// The key service's policies as last stored (sealed), if any.
    pub fn key_policies(&self) -> Result<Option<Sealed>, ConsensusError> {
        self.tables.key_policies().map_err(storage)
    }

    /// The sequence number the next audit record gets (1 for an empty log).
    pub fn audit_next(&self) -> Result<u64, ConsensusError> {
        self.tables.audit_next().map_err(storage)
    }

    pub fn audit_record(&self, sequence: u64) -> Result<Option<AuditRecord>, ConsensusError> {
        self.tables.audit_record(sequence).map_err(storage)
    }

    /// The log id of the last entry applied to this state.
    pub fn applied(&self) -> Result<Option<LogId>, ConsensusError> {
        let value = self
            .tables
            .meta
            .get(crate::state::META_APPLIED)
            .map_err(|e| ConsensusError::Storage(e.to_string()))?;
        match value {
            None => Ok(None),
            Some(bytes) => crate::state::decode(bytes.value()).map(Some).map_err(storage),
        }
    }

    /// Whether `command` fits this state (the check every node repeats when applying it).
    pub fn check(&self, command: &Command) -> Result<(), ConsensusError> {
        self.tables.check(command).map_err(storage)
    }

    /// Every row of the metadata tables, for comparing replicas: two nodes that applied the
    /// same log hold equal digests. The applied log id and membership are left out (a node
    /// that installed a snapshot records them from the snapshot, not from the entries).
    pub fn rows(&self) -> Result<Vec<Row>, ConsensusError> {
        let tables = [
            &self.tables.tenants,
            &self.tables.buckets,
            &self.tables.objects,
            &self.tables.uploads,
            &self.tables.parts,
            &self.tables.credentials,
            &self.tables.chunk_refs,
            &self.tables.key_epochs,
            &self.tables.audit,
            &self.tables.meta,
        ];
        const _: () = assert!(SNAPSHOT_TABLES.len() == 10, "rows() lists every snapshot table");
        let mut rows = Vec::new();
        for (position, table) in tables.into_iter().enumerate() {
            for row in table.iter().map_err(|e| ConsensusError::Storage(e.to_string()))? {
                let (key, value) = row.map_err(|e| ConsensusError::Storage(e.to_string()))?;
                let key = key.value();
                if key == crate::state::META_APPLIED || key == crate::state::META_MEMBERSHIP {
                    continue;
                }
                rows.push((position, key.to_vec(), value.value().to_vec()));
            }
        }
        Ok(rows)
    }
}
