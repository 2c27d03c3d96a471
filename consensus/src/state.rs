//! The metadata state machine's tables and the two steps of applying a command: `check`
//! (reads only; refuses a command that does not fit the state) and `write` (changes the
//! tables of a command that passed `check` in the same transaction).
//!
//! Both run on the leader's view before a proposal (check only) and on every node when the
//! entry is applied (check, then write), so a command refused anywhere is refused everywhere
//! with the same answer and changes nothing.
//!
//! Keys are byte strings built so that a prefix scan finds a tenant's buckets, a bucket's
//! objects, an upload's parts; multi-byte numbers in keys are big-endian so they sort.
//! Values are records: one version byte, then the record in postcard.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use redb::{ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use crate::command::AuditRecord;
use crate::command::{
    ChunkId, ChunkRef, Command, DedupMode, ETag, KeyScope, Manifest, ObjectBody, Part,
    PutCondition, RefDelta, Sealed, TenantId, UploadId,
};
use crate::constants::{MANIFEST_CHUNKS_MAX, UPLOADS_OPEN_PER_TENANT_MAX};
use crate::error::Rejection;
use crate::types::Applied;

pub(crate) type Bytes = &'static [u8];
type Def = TableDefinition<'static, Bytes, Bytes>;

pub(crate) const TENANTS: Def = TableDefinition::new("sm_tenants");
pub(crate) const BUCKETS: Def = TableDefinition::new("sm_buckets");
pub(crate) const OBJECTS: Def = TableDefinition::new("sm_objects");
pub(crate) const UPLOADS: Def = TableDefinition::new("sm_uploads");
pub(crate) const PARTS: Def = TableDefinition::new("sm_parts");
pub(crate) const CREDENTIALS: Def = TableDefinition::new("sm_credentials");
pub(crate) const CHUNK_REFS: Def = TableDefinition::new("sm_chunk_refs");
pub(crate) const KEY_EPOCHS: Def = TableDefinition::new("sm_key_epochs");
pub(crate) const AUDIT: Def = TableDefinition::new("sm_audit");
/// The state machine's own bookkeeping: last applied log id, membership, next audit number.
pub(crate) const SM_META: Def = TableDefinition::new("sm_meta");

/// Every table a snapshot carries, in a fixed order (a snapshot names tables by position).
pub(crate) const SNAPSHOT_TABLES: [Def; 10] = [
    TENANTS,
    BUCKETS,
    OBJECTS,
    UPLOADS,
    PARTS,
    CREDENTIALS,
    CHUNK_REFS,
    KEY_EPOCHS,
    AUDIT,
    SM_META,
];

pub(crate) const META_APPLIED: &[u8] = b"applied";
pub(crate) const META_MEMBERSHIP: &[u8] = b"membership";
const META_AUDIT_NEXT: &[u8] = b"audit_next";
const META_KEY_POLICIES: &[u8] = b"key_policies";

/// The refusal of a key for a shredded tenant (the key manager matches on it).
pub const TENANT_KEYS_DESTROYED: &str = "tenant keys destroyed";
/// The refusal of an audit append whose sequence is no longer the next one (retry).
pub const AUDIT_SEQUENCE_NOT_NEXT: &str = "audit sequence is not the next one";
/// The refusal of an epoch that is not one past the current one (retry after re-reading).
pub const KEY_EPOCH_NOT_NEXT: &str = "key epoch is not the next one";

/// The refusal of a conditional put whose condition the object does not meet (S3's 412).
pub const PRECONDITION_FAILED: &str = "precondition failed";
/// The refusal of a completion naming a part whose ETag is not the stored one.
pub const PART_ETAG_DIFFERS: &str = "part ETag differs";
/// The refusal of a new upload when the tenant has the most open uploads allowed.
pub const TOO_MANY_UPLOADS: &str = "too many open uploads";

/// Version byte in front of every record value.
const RECORD_FORMAT_VERSION: u8 = 1;

/// A tenant as the state machine keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRecord {
    pub dedup: DedupMode,
    pub sealed_config: Sealed,
}

/// An open multipart upload (its parts are rows of their own).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    pub bucket: String,
    pub key: Vec<u8>,
    pub sealed_user_metadata: Sealed,
}

/// An S3 access key: whose it is and its secret, sealed by the key manager.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialRecord {
    pub tenant: TenantId,
    pub workload: String,
    pub sealed_secret: Sealed,
}

/// Why a check or a write could not finish: the command does not fit (nothing changed), or
/// the store failed or holds a record it cannot read.
#[derive(Debug)]
pub(crate) enum StateError {
    Rejected(Rejection),
    Store(String),
}

impl From<Rejection> for StateError {
    fn from(rejection: Rejection) -> StateError {
        StateError::Rejected(rejection)
    }
}

impl From<redb::StorageError> for StateError {
    fn from(error: redb::StorageError) -> StateError {
        StateError::Store(error.to_string())
    }
}

/// The state machine's tables, open in one transaction: read-only tables for a check on
/// the leader, writable ones when applying.
pub(crate) struct Tables<T> {
    pub tenants: T,
    pub buckets: T,
    pub objects: T,
    pub uploads: T,
    pub parts: T,
    pub credentials: T,
    pub chunk_refs: T,
    pub key_epochs: T,
    pub audit: T,
    pub meta: T,
}

impl Tables<LazyTable> {
    /// The tables of a read transaction, each opened when a read first touches it.
    pub(crate) fn open_read(txn: redb::ReadTransaction) -> Self {
        let txn = Arc::new(txn);
        let table = |definition| LazyTable::new(txn.clone(), definition);
        Tables {
            tenants: table(TENANTS),
            buckets: table(BUCKETS),
            objects: table(OBJECTS),
            uploads: table(UPLOADS),
            parts: table(PARTS),
            credentials: table(CREDENTIALS),
            chunk_refs: table(CHUNK_REFS),
            key_epochs: table(KEY_EPOCHS),
            audit: table(AUDIT),
            meta: table(SM_META),
        }
    }
}

/// A table of a read transaction, opened on its first read. Measured: a view that opened
/// all ten tables cost 7% of the server's CPU under 64 KiB PUTs (a request takes several
/// views, and each reads one or two tables).
pub(crate) struct LazyTable {
    txn: Arc<redb::ReadTransaction>,
    definition: Def,
    table: OnceLock<redb::ReadOnlyTable<Bytes, Bytes>>,
}

impl LazyTable {
    fn new(txn: Arc<redb::ReadTransaction>, definition: Def) -> LazyTable {
        LazyTable { txn, definition, table: OnceLock::new() }
    }

    fn table(&self) -> Result<&redb::ReadOnlyTable<Bytes, Bytes>, redb::StorageError> {
        if let Some(table) = self.table.get() {
            return Ok(table);
        }
        let table = self.txn.open_table(self.definition).map_err(|error| match error {
            redb::TableError::Storage(error) => error,
            // Every table is created when the store opens: anything else is damage.
            other => redb::StorageError::Corrupted(other.to_string()),
        })?;
        Ok(self.table.get_or_init(|| table))
    }
}

impl redb::ReadableTableMetadata for LazyTable {
    fn stats(&self) -> Result<redb::TableStats, redb::StorageError> {
        self.table()?.stats()
    }

    fn len(&self) -> Result<u64, redb::StorageError> {
        self.table()?.len()
    }
}

impl ReadableTable<Bytes, Bytes> for LazyTable {
    fn get<'a>(
        &self,
        key: impl std::borrow::Borrow<&'a [u8]>,
    ) -> Result<Option<redb::AccessGuard<'_, Bytes>>, redb::StorageError> {
        self.table()?.get(key)
    }

    fn range<'a, KR>(
        &self,
        range: impl std::ops::RangeBounds<KR> + 'a,
    ) -> Result<redb::Range<'_, Bytes, Bytes>, redb::StorageError>
    where
        KR: std::borrow::Borrow<&'a [u8]> + 'a,
    {
        self.table()?.range(range)
    }

    #[allow(clippy::type_complexity)]
    fn first(
        &self,
    ) -> Result<
        Option<(redb::AccessGuard<'_, Bytes>, redb::AccessGuard<'_, Bytes>)>,
        redb::StorageError,
    > {
        self.table()?.first()
    }

    #[allow(clippy::type_complexity)]
    fn last(
        &self,
    ) -> Result<
        Option<(redb::AccessGuard<'_, Bytes>, redb::AccessGuard<'_, Bytes>)>,
        redb::StorageError,
    > {
        self.table()?.last()
    }
}

impl<'txn> Tables<redb::Table<'txn, Bytes, Bytes>> {
    pub(crate) fn open_write(txn: &'txn redb::WriteTransaction) -> Result<Self, redb::TableError> {
        Ok(Tables {
            tenants: txn.open_table(TENANTS)?,
            buckets: txn.open_table(BUCKETS)?,
            objects: txn.open_table(OBJECTS)?,
            uploads: txn.open_table(UPLOADS)?,
            parts: txn.open_table(PARTS)?,
            credentials: txn.open_table(CREDENTIALS)?,
            chunk_refs: txn.open_table(CHUNK_REFS)?,
            key_epochs: txn.open_table(KEY_EPOCHS)?,
            audit: txn.open_table(AUDIT)?,
            meta: txn.open_table(SM_META)?,
        })
    }
}

// ---- reads (both kinds of table) ----

impl<T: ReadableTable<Bytes, Bytes>> Tables<T> {
    pub(crate) fn tenant(&self, tenant: &TenantId) -> Result<Option<TenantRecord>, StateError> {
        read_record(&self.tenants, &tenant.0)
    }

    pub(crate) fn bucket_exists(
        &self,
        tenant: &TenantId,
        bucket: &str,
    ) -> Result<bool, StateError> {
        Ok(self.buckets.get(bucket_key(tenant, bucket).as_slice())?.is_some())
    }

    pub(crate) fn object(
        &self,
        tenant: &TenantId,
        bucket: &str,
        key: &[u8],
    ) -> Result<Option<Manifest>, StateError> {
        read_record(&self.objects, &object_key(tenant, bucket, key))
    }

    pub(crate) fn upload(
        &self,
        tenant: &TenantId,
        upload: &UploadId,
    ) -> Result<Option<UploadRecord>, StateError> {
        read_record(&self.uploads, &upload_key(tenant, upload))
    }

    pub(crate) fn part(
        &self,
        tenant: &TenantId,
        upload: &UploadId,
        number: u16,
    ) -> Result<Option<Part>, StateError> {
        read_record(&self.parts, &part_key(tenant, upload, number))
    }

    /// How many chunks the parts of an upload name together (kept in part row 0).
    pub(crate) fn upload_chunks(
        &self,
        tenant: &TenantId,
        upload: &UploadId,
    ) -> Result<u64, StateError> {
        Ok(read_record::<u64, _>(&self.parts, &part_key(tenant, upload, 0))?.unwrap_or(0))
    }

    pub(crate) fn credential(
        &self,
        access_key_id: &str,
    ) -> Result<Option<CredentialRecord>, StateError> {
        read_record(&self.credentials, access_key_id.as_bytes())
    }

    /// Up to `limit` tenants whose ids sort after `after`, in id order.
    pub(crate) fn tenants(
        &self,
        after: Option<&TenantId>,
        limit: usize,
    ) -> Result<Vec<(TenantId, TenantRecord)>, StateError> {
        let mut tenants = Vec::new();
        let start: &[u8] = after.map_or(&[], |after| after.0.as_slice());
        for row in self.tenants.range(start..)? {
            if tenants.len() >= limit {
                break;
            }
            let (key, value) = row?;
            let id: [u8; 16] = key
                .value()
                .try_into()
                .map_err(|_| StateError::Store("tenant row key is not 16 bytes".into()))?;
            if after.is_some_and(|after| id == after.0) {
                continue;
            }
            tenants.push((TenantId(id), decode(value.value())?));
        }
        Ok(tenants)
    }

    /// Up to `limit` access keys of `tenant` (and their records), in access-key order.
    /// Credentials are keyed by access key, so this reads every one.
    pub(crate) fn credentials_of(
        &self,
        tenant: &TenantId,
        limit: usize,
    ) -> Result<Vec<(String, CredentialRecord)>, StateError> {
        let mut found = Vec::new();
        for row in self.credentials.iter()? {
            if found.len() >= limit {
                break;
            }
            let (key, value) = row?;
            let record: CredentialRecord = decode(value.value())?;
            if record.tenant != *tenant {
                continue;
            }
            let access_key = String::from_utf8(key.value().to_vec())
                .map_err(|_| StateError::Store("access key is not UTF-8".into()))?;
            found.push((access_key, record));
        }
        Ok(found)
    }

    pub(crate) fn chunk_refs(&self, chunk: &ChunkId) -> Result<u64, StateError> {
        match self.chunk_refs.get(chunk.0.as_slice())? {
            None => Ok(0),
            Some(value) => {
                let bytes: [u8; 8] = value
                    .value()
                    .try_into()
                    .map_err(|_| StateError::Store("refcount record is not 8 bytes".into()))?;
                Ok(u64::from_le_bytes(bytes))
            }
        }
    }

    /// The newest epoch of a key and its sealed material; `None` before the first.
    pub(crate) fn key_epoch(&self, scope: &KeyScope) -> Result<Option<(u32, Sealed)>, StateError> {
        let prefix = key_scope_bytes(scope);
        let mut newest = None;
        for row in self.key_epochs.range(prefix.as_slice()..)? {
            let (key, value) = row?;
            let key = key.value();
            if !key.starts_with(&prefix) {
                break;
            }
            let epoch_bytes: [u8; 4] = key[prefix.len()..]
                .try_into()
                .map_err(|_| StateError::Store("key epoch row key".into()))?;
            newest = Some((u32::from_be_bytes(epoch_bytes), Sealed(value.value().to_vec())));
        }
        Ok(newest)
    }

    /// The sealed material of one epoch of a key; `None` if never created or retired.
    pub(crate) fn key_epoch_at(
        &self,
        scope: &KeyScope,
        epoch: u32,
    ) -> Result<Option<Sealed>, StateError> {
        let mut row = key_scope_bytes(scope);
        row.extend_from_slice(&epoch.to_be_bytes());
        Ok(self.key_epochs.get(row.as_slice())?.map(|value| Sealed(value.value().to_vec())))
    }

    /// True once the tenant's keys were destroyed (crypto-shred).
    pub(crate) fn keys_destroyed(&self, tenant: &TenantId) -> Result<bool, StateError> {
        Ok(self.key_epochs.get(destroyed_key(tenant).as_slice())?.is_some())
    }

    pub(crate) fn audit_record(&self, sequence: u64) -> Result<Option<AuditRecord>, StateError> {
        read_record(&self.audit, &sequence.to_be_bytes())
    }

    /// The key service's policies as the key manager sealed them, once any were stored.
    pub(crate) fn key_policies(&self) -> Result<Option<Sealed>, StateError> {
        Ok(self.meta.get(META_KEY_POLICIES)?.map(|row| Sealed(row.value().to_vec())))
    }

    /// The sequence number the next audit record gets (the first is 1).
    pub(crate) fn audit_next(&self) -> Result<u64, StateError> {
        Ok(read_record::<u64, _>(&self.meta, META_AUDIT_NEXT)?.unwrap_or(1))
    }

    /// The tenant holding a bucket of this name, if any. Scans the bucket table: bucket
    /// counts are small next to objects, and only bucket creation and a caller naming a
    /// bucket it does not hold ask.
    pub(crate) fn bucket_owner(&self, bucket: &str) -> Result<Option<TenantId>, StateError> {
        for row in self.buckets.iter()? {
            let (key, _) = row?;
            let key = key.value();
            if let Some((tenant, name)) = key.split_first_chunk::<16>()
                && name == bucket.as_bytes()
            {
                return Ok(Some(TenantId(*tenant)));
            }
        }
        Ok(None)
    }

    /// The tenant's bucket names, in byte order.
    pub(crate) fn buckets(&self, tenant: &TenantId) -> Result<Vec<String>, StateError> {
        let mut names = Vec::new();
        for row in self.buckets.range(tenant.0.as_slice()..)? {
            let (key, _) = row?;
            let Some(name) = key.value().strip_prefix(tenant.0.as_slice()) else { break };
            let name = std::str::from_utf8(name)
                .map_err(|_| StateError::Store("bucket name is not UTF-8".into()))?;
            names.push(name.to_owned());
        }
        Ok(names)
    }

    /// Up to `limit` objects of a bucket whose keys start with `prefix` and sort after
    /// `after` (all of them from the prefix on when `None`), in byte order of their keys.
    pub(crate) fn objects(
        &self,
        tenant: &TenantId,
        bucket: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Manifest)>, StateError> {
        let bucket_prefix = object_prefix(tenant, bucket);
        let start = match after {
            Some(after) if after >= prefix => {
                // The smallest key after `after`: `after` followed by a zero byte.
                let mut start = object_key(tenant, bucket, after);
                start.push(0);
                start
            }
            _ => object_key(tenant, bucket, prefix),
        };
        let mut objects = Vec::new();
        if limit == 0 {
            return Ok(objects);
        }
        for row in self.objects.range(start.as_slice()..)? {
            let (key, value) = row?;
            let Some(object) = key.value().strip_prefix(bucket_prefix.as_slice()) else { break };
            if !object.starts_with(prefix) {
                break;
            }
            objects.push((object.to_vec(), decode(value.value())?));
            if objects.len() == limit {
                break;
            }
        }
        Ok(objects)
    }

    /// The tenant's open uploads in upload-id order (at most
    /// [`UPLOADS_OPEN_PER_TENANT_MAX`], which `CreateUpload` keeps to).
    pub(crate) fn uploads(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<(UploadId, UploadRecord)>, StateError> {
        let mut uploads = Vec::new();
        for row in self.uploads.range(tenant.0.as_slice()..)? {
            let (key, value) = row?;
            let Some(id) = key.value().strip_prefix(tenant.0.as_slice()) else { break };
            let id: [u8; 16] =
                id.try_into().map_err(|_| StateError::Store("upload row key".into()))?;
            uploads.push((UploadId(id), decode(value.value())?));
            if uploads.len() == UPLOADS_OPEN_PER_TENANT_MAX {
                break;
            }
        }
        Ok(uploads)
    }

    /// How many uploads the tenant has open, counted up to [`UPLOADS_OPEN_PER_TENANT_MAX`]
    /// (rows counted, not decoded: every new upload asks).
    fn open_uploads(&self, tenant: &TenantId) -> Result<usize, StateError> {
        let mut count = 0;
        for row in self.uploads.range(tenant.0.as_slice()..)? {
            if !row?.0.value().starts_with(&tenant.0) || count == UPLOADS_OPEN_PER_TENANT_MAX {
                break;
            }
            count += 1;
        }
        Ok(count)
    }

    /// Up to `limit` parts of an upload numbered above `after`, in number order.
    pub(crate) fn parts(
        &self,
        tenant: &TenantId,
        upload: &UploadId,
        after: u16,
        limit: usize,
    ) -> Result<Vec<(u16, Part)>, StateError> {
        let prefix = upload_key(tenant, upload);
        let mut parts = Vec::new();
        if limit == 0 || after == u16::MAX {
            return Ok(parts);
        }
        let start = part_key(tenant, upload, after + 1);
        for row in self.parts.range(start.as_slice()..)? {
            let (key, value) = row?;
            let Some(number) = key.value().strip_prefix(prefix.as_slice()) else { break };
            let number: [u8; 2] =
                number.try_into().map_err(|_| StateError::Store("part row key".into()))?;
            parts.push((u16::from_be_bytes(number), decode(value.value())?));
            if parts.len() == limit {
                break;
            }
        }
        Ok(parts)
    }

    fn has_rows_with_prefix(table: &T, prefix: &[u8]) -> Result<bool, StateError> {
        match table.range(prefix..)?.next() {
            None => Ok(false),
            Some(row) => Ok(row?.0.value().starts_with(prefix)),
        }
    }

    fn bucket_has_uploads(&self, tenant: &TenantId, bucket: &str) -> Result<bool, StateError> {
        for row in self.uploads.range(tenant.0.as_slice()..)? {
            let (key, value) = row?;
            if !key.value().starts_with(&tenant.0) {
                break;
            }
            let upload: UploadRecord = decode(value.value())?;
            if upload.bucket == bucket {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Refuses a command that does not fit the state; reads only.
    pub(crate) fn check(&self, command: &Command) -> Result<(), StateError> {
        match command {
            Command::CreateTenant { tenant, .. } => {
                if self.tenant(tenant)?.is_some() {
                    return Err(Rejection::already_exists("tenant").into());
                }
            }
            Command::DeleteTenant { tenant } => {
                self.require_tenant(tenant)?;
                if Self::has_rows_with_prefix(&self.buckets, &tenant.0)? {
                    return Err(Rejection::conflict("tenant still has buckets").into());
                }
            }
            Command::CreateBucket { tenant, bucket } => {
                self.require_tenant(tenant)?;
                // Bucket names are one namespace across the tenants of the group, as S3's
                // are across accounts.
                if self.bucket_owner(bucket)?.is_some() {
                    return Err(Rejection::already_exists("bucket").into());
                }
            }
            Command::DeleteBucket { tenant, bucket } => {
                self.require_bucket(tenant, bucket)?;
                if Self::has_rows_with_prefix(&self.objects, &object_prefix(tenant, bucket))? {
                    return Err(Rejection::conflict("bucket not empty").into());
                }
                if self.bucket_has_uploads(tenant, bucket)? {
                    return Err(Rejection::conflict("bucket has open uploads").into());
                }
            }
            Command::PutObject { tenant, bucket, .. } => self.require_bucket(tenant, bucket)?,
            Command::PutObjectIf { tenant, bucket, key, condition, .. } => {
                self.require_bucket(tenant, bucket)?;
                let current = self.object(tenant, bucket, key)?;
                let met = match (condition, current) {
                    (PutCondition::Absent, current) => current.is_none(),
                    (PutCondition::ETagIs(_) | PutCondition::Present, None) => {
                        return Err(Rejection::not_found("object").into());
                    }
                    (PutCondition::ETagIs(etag), Some(current)) => current.etag == *etag,
                    (PutCondition::Present, Some(_)) => true,
                };
                if !met {
                    return Err(Rejection::conflict(PRECONDITION_FAILED).into());
                }
            }
            Command::CreateUpload { tenant, bucket, upload, .. } => {
                self.require_bucket(tenant, bucket)?;
                if self.upload(tenant, upload)?.is_some() {
                    return Err(Rejection::already_exists("upload").into());
                }
                if self.open_uploads(tenant)? >= UPLOADS_OPEN_PER_TENANT_MAX {
                    return Err(Rejection::conflict(TOO_MANY_UPLOADS).into());
                }
            }
            Command::DeleteObject { tenant, bucket, key } => {
                if self.object(tenant, bucket, key)?.is_none() {
                    return Err(Rejection::not_found("object").into());
                }
            }
            Command::PutPart { tenant, upload, number, part } => {
                self.require_upload(tenant, upload)?;
                // An upload holds at most one manifest's worth of chunks, so that whatever
                // it completes into fits a manifest and what an abort releases is bounded.
                let replaced = self.part(tenant, upload, *number)?.map_or(0, |p| p.chunks.len());
                let total = self.upload_chunks(tenant, upload)?.saturating_sub(replaced as u64)
                    + part.chunks.len() as u64;
                if total > MANIFEST_CHUNKS_MAX as u64 {
                    return Err(Rejection::TooLarge {
                        size_bytes: usize::try_from(total).unwrap_or(usize::MAX),
                        max_bytes: MANIFEST_CHUNKS_MAX,
                    }
                    .into());
                }
            }
            Command::AbortUpload { tenant, upload } => {
                self.require_upload(tenant, upload)?;
            }
            Command::CompleteUpload { tenant, upload, parts, .. }
            | Command::CompleteUploadAs { tenant, upload, parts, .. } => {
                let record = self.require_upload(tenant, upload)?;
                self.require_bucket(tenant, &record.bucket)?;
                let mut chunks = 0usize;
                for (number, etag) in parts {
                    match self.part(tenant, upload, *number)? {
                        None => return Err(Rejection::not_found("part").into()),
                        Some(part) if part.etag != *etag => {
                            return Err(Rejection::conflict(PART_ETAG_DIFFERS).into());
                        }
                        Some(part) => chunks += part.chunks.len(),
                    }
                }
                // The object's manifest is bounded like any other.
                if chunks > MANIFEST_CHUNKS_MAX {
                    return Err(Rejection::TooLarge {
                        size_bytes: chunks,
                        max_bytes: MANIFEST_CHUNKS_MAX,
                    }
                    .into());
                }
            }
            Command::PutCredential { access_key_id, .. } => {
                if self.credential(access_key_id)?.is_some() {
                    return Err(Rejection::already_exists("access key").into());
                }
            }
            Command::DeleteCredential { access_key_id } => {
                if self.credential(access_key_id)?.is_none() {
                    return Err(Rejection::not_found("access key").into());
                }
            }
            Command::AdjustChunkRefs { deltas } => {
                self.adjusted_refs(deltas)?;
            }
            Command::AdvanceKeyEpoch { scope, epoch, .. } => {
                if let KeyScope::Tenant(tenant) = scope {
                    self.require_tenant(tenant)?;
                    if self.keys_destroyed(tenant)? {
                        return Err(Rejection::conflict(TENANT_KEYS_DESTROYED).into());
                    }
                }
                let current = self.key_epoch(scope)?.map_or(0, |(epoch, _)| epoch);
                if current.checked_add(1) != Some(*epoch) {
                    return Err(Rejection::conflict(KEY_EPOCH_NOT_NEXT).into());
                }
            }
            Command::AppendAudit { .. } => {}
            Command::RetireKeyEpoch { scope, epoch } => {
                if self.key_epoch_at(scope, *epoch)?.is_none() {
                    return Err(Rejection::not_found("key epoch").into());
                }
                if self.key_epoch(scope)?.map(|(current, _)| current) == Some(*epoch) {
                    return Err(
                        Rejection::conflict("the current key epoch cannot be retired").into()
                    );
                }
            }
            Command::DestroyTenantKeys { tenant } => {
                if self.keys_destroyed(tenant)? {
                    return Err(Rejection::conflict(TENANT_KEYS_DESTROYED).into());
                }
            }
            Command::AppendAuditAt { sequence, .. } => {
                if *sequence != self.audit_next()? {
                    return Err(Rejection::conflict(AUDIT_SEQUENCE_NOT_NEXT).into());
                }
            }
            Command::PutKeyPolicies { .. } => {}
            Command::AppendAuditRun { first, .. } => {
                if *first != self.audit_next()? {
                    return Err(Rejection::conflict(AUDIT_SEQUENCE_NOT_NEXT).into());
                }
            }
        }
        Ok(())
    }

    fn require_tenant(&self, tenant: &TenantId) -> Result<TenantRecord, StateError> {
        self.tenant(tenant)?.ok_or_else(|| Rejection::not_found("tenant").into())
    }

    fn require_bucket(&self, tenant: &TenantId, bucket: &str) -> Result<(), StateError> {
        if !self.bucket_exists(tenant, bucket)? {
            return Err(Rejection::not_found("bucket").into());
        }
        Ok(())
    }

    fn require_upload(
        &self,
        tenant: &TenantId,
        upload: &UploadId,
    ) -> Result<UploadRecord, StateError> {
        self.upload(tenant, upload)?.ok_or_else(|| Rejection::not_found("upload").into())
    }

    /// The refcounts `deltas` would leave, all or nothing: refused if any would go below
    /// zero or overflow. Deltas naming one chunk twice add up.
    fn adjusted_refs(&self, deltas: &[RefDelta]) -> Result<BTreeMap<ChunkId, u64>, StateError> {
        let mut summed: BTreeMap<ChunkId, i64> = BTreeMap::new();
        for delta in deltas {
            *summed.entry(delta.chunk).or_default() += i64::from(delta.delta);
        }
        let mut counts = BTreeMap::new();
        for (chunk, delta) in summed {
            let current = self.chunk_refs(&chunk)?;
            let next = current
                .checked_add_signed(delta)
                .ok_or(Rejection::conflict("refcount would go below zero or overflow"))?;
            counts.insert(chunk, next);
        }
        Ok(counts)
    }
}

// ---- writes ----

impl Tables<redb::Table<'_, Bytes, Bytes>> {
    /// Checks `command` and, if it fits, writes it. A refused command writes nothing.
    pub(crate) fn apply(&mut self, command: &Command) -> Result<Applied, StateError> {
        self.check(command)?;
        self.write(command)
    }

    fn write(&mut self, command: &Command) -> Result<Applied, StateError> {
        match command {
            Command::CreateTenant { tenant, dedup, sealed_config } => {
                let record = TenantRecord { dedup: *dedup, sealed_config: sealed_config.clone() };
                self.tenants.insert(tenant.0.as_slice(), encode(&record).as_slice())?;
            }
            Command::DeleteTenant { tenant } => {
                self.tenants.remove(tenant.0.as_slice())?;
            }
            Command::CreateBucket { tenant, bucket } => {
                self.buckets.insert(bucket_key(tenant, bucket).as_slice(), [].as_slice())?;
            }
            Command::DeleteBucket { tenant, bucket } => {
                self.buckets.remove(bucket_key(tenant, bucket).as_slice())?;
            }
            Command::PutObject { tenant, bucket, key, manifest }
            | Command::PutObjectIf { tenant, bucket, key, manifest, .. } => {
                let row = object_key(tenant, bucket, key);
                let old = self.objects.insert(row.as_slice(), encode(manifest).as_slice())?;
                if let Some(old) = old {
                    return Ok(Applied::Replaced(Box::new(decode(old.value())?)));
                }
            }
            Command::DeleteObject { tenant, bucket, key } => {
                let old = self.objects.remove(object_key(tenant, bucket, key).as_slice())?;
                if let Some(old) = old {
                    return Ok(Applied::Replaced(Box::new(decode(old.value())?)));
                }
            }
            Command::CreateUpload { tenant, bucket, key, upload, sealed_user_metadata } => {
                let record = UploadRecord {
                    bucket: bucket.clone(),
                    key: key.clone(),
                    sealed_user_metadata: sealed_user_metadata.clone(),
                };
                self.uploads
                    .insert(upload_key(tenant, upload).as_slice(), encode(&record).as_slice())?;
            }
            Command::PutPart { tenant, upload, number, part } => {
                let row = part_key(tenant, upload, *number);
                let old = match self.parts.insert(row.as_slice(), encode(part).as_slice())? {
                    Some(old) => Some(decode::<Part>(old.value())?),
                    None => None,
                };
                let replaced = old.as_ref().map_or(0, |old| old.chunks.len() as u64);
                let total = self.upload_chunks(tenant, upload)?.saturating_sub(replaced)
                    + part.chunks.len() as u64;
                let total_row = part_key(tenant, upload, 0);
                self.parts.insert(total_row.as_slice(), encode(&total).as_slice())?;
                if let Some(old) = old {
                    return Ok(Applied::Released(old.chunks));
                }
            }
            Command::CompleteUpload { tenant, upload, parts, etag } => {
                return self.complete_upload(tenant, upload, parts, *etag, None);
            }
            Command::CompleteUploadAs { tenant, upload, parts, etag, sealed_user_metadata } => {
                let sealed = Some(sealed_user_metadata.clone());
                return self.complete_upload(tenant, upload, parts, *etag, sealed);
            }
            Command::AbortUpload { tenant, upload } => {
                return Ok(Applied::Released(self.drop_upload(tenant, upload)?));
            }
            Command::PutCredential { access_key_id, tenant, workload, sealed_secret } => {
                let record = CredentialRecord {
                    tenant: *tenant,
                    workload: workload.clone(),
                    sealed_secret: sealed_secret.clone(),
                };
                self.credentials.insert(access_key_id.as_bytes(), encode(&record).as_slice())?;
            }
            Command::DeleteCredential { access_key_id } => {
                self.credentials.remove(access_key_id.as_bytes())?;
            }
            Command::AdjustChunkRefs { deltas } => {
                for (chunk, count) in self.adjusted_refs(deltas)? {
                    if count == 0 {
                        self.chunk_refs.remove(chunk.0.as_slice())?;
                    } else {
                        self.chunk_refs
                            .insert(chunk.0.as_slice(), count.to_le_bytes().as_slice())?;
                    }
                }
            }
            Command::AdvanceKeyEpoch { scope, epoch, sealed_key } => {
                let mut row = key_scope_bytes(scope);
                row.extend_from_slice(&epoch.to_be_bytes());
                self.key_epochs.insert(row.as_slice(), sealed_key.0.as_slice())?;
            }
            Command::RetireKeyEpoch { scope, epoch } => {
                let mut row = key_scope_bytes(scope);
                row.extend_from_slice(&epoch.to_be_bytes());
                self.key_epochs.remove(row.as_slice())?;
            }
            Command::DestroyTenantKeys { tenant } => {
                let first = key_scope_bytes(&KeyScope::Tenant(*tenant));
                let mut last = first.clone();
                last.extend_from_slice(&u32::MAX.to_be_bytes());
                self.key_epochs.retain_in(first.as_slice()..=last.as_slice(), |_, _| false)?;
                self.key_epochs.insert(destroyed_key(tenant).as_slice(), [].as_slice())?;
            }
            Command::AppendAudit { scope, sealed_record }
            | Command::AppendAuditAt { scope, sealed_record, .. } => {
                let sequence = self.audit_next()?;
                let record = AuditRecord { scope: *scope, sealed_record: sealed_record.clone() };
                self.audit.insert(sequence.to_be_bytes().as_slice(), encode(&record).as_slice())?;
                let next = sequence + 1;
                self.meta.insert(META_AUDIT_NEXT, encode(&next).as_slice())?;
                return Ok(Applied::AuditSequence(sequence));
            }
            Command::PutKeyPolicies { sealed_policies } => {
                self.meta.insert(META_KEY_POLICIES, sealed_policies.0.as_slice())?;
            }
            Command::AppendAuditRun { first, records } => {
                let mut sequence = *first;
                for record in records {
                    self.audit
                        .insert(sequence.to_be_bytes().as_slice(), encode(record).as_slice())?;
                    sequence += 1;
                }
                self.meta.insert(META_AUDIT_NEXT, encode(&sequence).as_slice())?;
                return Ok(Applied::AuditSequence(sequence - 1));
            }
        }
        Ok(Applied::Done)
    }

    /// Joins the named parts into the object's manifest (with `sealed_user_metadata`, or
    /// the upload's when `None`) and drops the upload. Returns the chunks nothing names any
    /// more: the parts left out and the object replaced.
    fn complete_upload(
        &mut self,
        tenant: &TenantId,
        upload: &UploadId,
        parts: &[(u16, ETag)],
        etag: ETag,
        sealed_user_metadata: Option<Sealed>,
    ) -> Result<Applied, StateError> {
        let record = self
            .upload(tenant, upload)?
            .ok_or_else(|| StateError::Store("upload vanished between check and write".into()))?;
        let mut chunks = Vec::new();
        let mut size_bytes = 0u64;
        for (number, _) in parts {
            let part = self
                .part(tenant, upload, *number)?
                .ok_or_else(|| StateError::Store("part vanished between check and write".into()))?;
            chunks.extend_from_slice(&part.chunks);
            size_bytes += part.size_bytes;
        }
        let manifest = Manifest {
            size_bytes,
            body: ObjectBody::Chunks(chunks),
            sealed_user_metadata: sealed_user_metadata.unwrap_or(record.sealed_user_metadata),
            etag,
        };
        let row = object_key(tenant, &record.bucket, &record.key);
        let replaced = match self.objects.insert(row.as_slice(), encode(&manifest).as_slice())? {
            Some(old) => Some(decode::<Manifest>(old.value())?),
            None => None,
        };
        let mut released = match replaced.map(|old| old.body) {
            Some(ObjectBody::Chunks(chunks)) => chunks,
            Some(ObjectBody::Inline(_)) | None => Vec::new(),
        };
        // The chunks of the named parts moved into the manifest; the others are released.
        let named: std::collections::BTreeSet<u16> = parts.iter().map(|(n, _)| *n).collect();
        for (number, part) in self.parts(tenant, upload, 0, usize::MAX)? {
            if !named.contains(&number) {
                released.extend_from_slice(&part.chunks);
            }
        }
        self.drop_upload(tenant, upload)?;
        Ok(Applied::Released(released))
    }

    /// Removes an upload and its parts; returns the chunks its parts named.
    fn drop_upload(
        &mut self,
        tenant: &TenantId,
        upload: &UploadId,
    ) -> Result<Vec<ChunkRef>, StateError> {
        let mut chunks = Vec::new();
        for (_, part) in self.parts(tenant, upload, 0, usize::MAX)? {
            chunks.extend_from_slice(&part.chunks);
        }
        let prefix = upload_key(tenant, upload);
        self.uploads.remove(prefix.as_slice())?;
        let mut end = prefix.clone();
        end.extend_from_slice(&u16::MAX.to_be_bytes());
        self.parts.retain_in(prefix.as_slice()..=end.as_slice(), |_, _| false)?;
        Ok(chunks)
    }
}

// ---- keys and records ----

fn bucket_key(tenant: &TenantId, bucket: &str) -> Vec<u8> {
    let mut key = tenant.0.to_vec();
    key.extend_from_slice(bucket.as_bytes());
    key
}

/// tenant (16) | bucket name length (1; names are at most 63 bytes) | bucket | object key.
fn object_prefix(tenant: &TenantId, bucket: &str) -> Vec<u8> {
    let mut key = tenant.0.to_vec();
    let length = u8::try_from(bucket.len()).expect("bucket names are checked to 63 bytes");
    key.push(length);
    key.extend_from_slice(bucket.as_bytes());
    key
}

fn object_key(tenant: &TenantId, bucket: &str, object: &[u8]) -> Vec<u8> {
    let mut key = object_prefix(tenant, bucket);
    key.extend_from_slice(object);
    key
}

fn upload_key(tenant: &TenantId, upload: &UploadId) -> Vec<u8> {
    let mut key = tenant.0.to_vec();
    key.extend_from_slice(&upload.0);
    key
}

/// tenant (16) | upload (16) | part number (2, big-endian). Number 0, which S3 never uses,
/// holds the upload's chunk count; listings start at 1, and dropping the upload removes it
/// with the parts.
fn part_key(tenant: &TenantId, upload: &UploadId, number: u16) -> Vec<u8> {
    let mut key = upload_key(tenant, upload);
    key.extend_from_slice(&number.to_be_bytes());
    key
}

/// The row that marks a tenant's keys destroyed: `2 | tenant`, beside the epoch rows
/// (`0 | epoch` for the system, `1 | tenant | epoch` for a tenant), which it never prefixes.
fn destroyed_key(tenant: &TenantId) -> Vec<u8> {
    let mut key = vec![2];
    key.extend_from_slice(&tenant.0);
    key
}

fn key_scope_bytes(scope: &KeyScope) -> Vec<u8> {
    match scope {
        KeyScope::System => vec![0],
        KeyScope::Tenant(tenant) => {
            let mut bytes = vec![1];
            bytes.extend_from_slice(&tenant.0);
            bytes
        }
    }
}

/// A record value: the format version byte, then the record in postcard.
pub(crate) fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    let mut bytes = vec![RECORD_FORMAT_VERSION];
    // Serializing our own in-memory types to a Vec cannot fail (postcard only fails on
    // a full fixed buffer or on types it does not support, and ours are all supported).
    let body = postcard::to_allocvec(record).expect("postcard encodes every metadata record");
    bytes.extend_from_slice(&body);
    bytes
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StateError> {
    match bytes.split_first() {
        Some((&RECORD_FORMAT_VERSION, body)) => postcard::from_bytes(body)
            .map_err(|error| StateError::Store(format!("bad record: {error}"))),
        Some((version, _)) => Err(StateError::Store(format!("record format version {version}"))),
        None => Err(StateError::Store("empty record".into())),
    }
}

fn read_record<R: DeserializeOwned, T: ReadableTable<Bytes, Bytes>>(
    table: &T,
    key: &[u8],
) -> Result<Option<R>, StateError> {
    match table.get(key)? {
        None => Ok(None),
        Some(value) => decode(value.value()).map(Some),
    }
}
