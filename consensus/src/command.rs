//! The metadata commands a group replicates: typed, versioned, and checked for shape
//! before they are proposed.
//!
//! A command's shape (lengths, counts, names) is checked here, without the state; whether
//! it fits the state (the tenant exists, the bucket is empty, the epoch is the next one) is
//! checked by `state.rs`, once on the leader before the proposal and again, deterministically,
//! when the entry is applied. A command that fails either check changes nothing.
//!
//! Everything a tenant would call private arrives sealed under its key (user metadata,
//! inline object bytes, credential secrets, key material, audit records): this crate
//! stores those blobs and never opens them.

use serde::{Deserialize, Serialize};

use crate::constants::{
    ACCESS_KEY_ID_MAX_BYTES, AUDIT_RUN_RECORDS_MAX, BUCKET_NAME_MAX_BYTES, BUCKET_NAME_MIN_BYTES,
    COMMAND_FORMAT_VERSION, COMMAND_MAX_BYTES, INLINE_OBJECT_MAX_BYTES, MANIFEST_CHUNKS_MAX,
    MULTIPART_PARTS_MAX, OBJECT_KEY_MAX_BYTES, REFCOUNT_DELTAS_MAX, SEALED_BLOB_MAX_BYTES,
    WORKLOAD_NAME_MAX_BYTES,
};
use crate::error::Rejection;

/// A tenant's id: the 16 bytes of its UUID (`kiseki_security::TenantId` holds the same
/// bytes). The nil UUID is refused: envelopes use it for "no tenant".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TenantId(pub [u8; 16]);

/// A chunk's content address (`kiseki_security::ChunkId`'s 32 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChunkId(pub [u8; 32]);

/// An upload id of a multipart upload, chosen by the gateway (random, 16 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct UploadId(pub [u8; 16]);

/// Bytes sealed by the key manager or the tenant; opaque here.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed(pub Vec<u8>);

/// An S3 ETag: the MD5 of an object (16 bytes), or of its parts' MD5s for multipart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ETag(pub [u8; 16]);

/// Whether a tenant's chunks dedup with other tenants' (shared SHA-256 ids) or only among
/// its own (HMAC ids under a tenant key; crypto-shred then reaches the chunks too).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DedupMode {
    CrossTenant,
    Isolated,
}

/// Which key an epoch belongs to: the cluster's master key or one tenant's KEK.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum KeyScope {
    System,
    Tenant(TenantId),
}

/// Whom an audit record concerns: the cluster or one tenant (whose admins may export it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AuditScope {
    System,
    Tenant(TenantId),
}

/// One chunk of an object, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    pub id: ChunkId,
    pub size_bytes: u32,
}

/// Where an object's bytes are: chunks in the engine, or sealed inline in the metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObjectBody {
    Chunks(Vec<ChunkRef>),
    Inline(Sealed),
}

/// An object's manifest as the state machine keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The object's plaintext size; for chunks, the sum of the chunk sizes.
    pub size_bytes: u64,
    pub body: ObjectBody,
    pub sealed_user_metadata: Sealed,
    pub etag: ETag,
}

/// One uploaded part of a multipart upload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    pub chunks: Vec<ChunkRef>,
    pub size_bytes: u64,
    pub etag: ETag,
}

/// One refcount change: positive when a manifest starts naming a chunk, negative when one
/// stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefDelta {
    pub chunk: ChunkId,
    pub delta: i32,
}

/// Everything a metadata group can be asked to change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    CreateTenant {
        tenant: TenantId,
        dedup: DedupMode,
        sealed_config: Sealed,
    },
    /// Refused while the tenant has a bucket.
    DeleteTenant {
        tenant: TenantId,
    },
    CreateBucket {
        tenant: TenantId,
        bucket: String,
    },
    /// Refused while the bucket holds an object or an upload.
    DeleteBucket {
        tenant: TenantId,
        bucket: String,
    },
    /// Creates or replaces the object's manifest.
    PutObject {
        tenant: TenantId,
        bucket: String,
        key: Vec<u8>,
        manifest: Manifest,
    },
    DeleteObject {
        tenant: TenantId,
        bucket: String,
        key: Vec<u8>,
    },
    CreateUpload {
        tenant: TenantId,
        bucket: String,
        key: Vec<u8>,
        upload: UploadId,
        sealed_user_metadata: Sealed,
    },
    /// Creates or replaces part `number` (1 to 10,000).
    PutPart {
        tenant: TenantId,
        upload: UploadId,
        number: u16,
        part: Part,
    },
    /// Joins the named parts, in the given (ascending) order, into the object and drops the
    /// upload; every named part must exist with the given ETag.
    CompleteUpload {
        tenant: TenantId,
        upload: UploadId,
        parts: Vec<(u16, ETag)>,
        etag: ETag,
    },
    AbortUpload {
        tenant: TenantId,
        upload: UploadId,
    },
    PutCredential {
        access_key_id: String,
        tenant: TenantId,
        workload: String,
        sealed_secret: Sealed,
    },
    DeleteCredential {
        access_key_id: String,
    },
    /// Applied all or nothing: refused if any count would go below zero.
    AdjustChunkRefs {
        deltas: Vec<RefDelta>,
    },
    /// Records epoch `epoch` of a key; it must be exactly one past the current one (the
    /// first epoch is 1), so two racing rotations cannot both win.
    AdvanceKeyEpoch {
        scope: KeyScope,
        epoch: u32,
        sealed_key: Sealed,
    },
    /// Appends a record; its sequence number is the response.
    AppendAudit {
        scope: AuditScope,
        sealed_record: Sealed,
    },
    // Added for the key manager (issue 7). Appended after the existing variants, so every
    // earlier command keeps its encoding (postcard numbers variants by position) and the
    // format version stays 1; a node of an older build refuses these as undecodable.
    /// Removes an old epoch of a key: refused for the current epoch or an absent one.
    RetireKeyEpoch {
        scope: KeyScope,
        epoch: u32,
    },
    /// Crypto-shred: removes every KEK epoch of the tenant and marks its keys destroyed
    /// for good (no `AdvanceKeyEpoch` of the tenant is accepted afterwards).
    DestroyTenantKeys {
        tenant: TenantId,
    },
    /// Appends a record only at `sequence`, which must be the next one: the appender
    /// chained the record to the one before it, and a racing append makes it retry
    /// instead of forking the chain. Its sequence number is the response.
    AppendAuditAt {
        scope: AuditScope,
        sequence: u64,
        sealed_record: Sealed,
    },
    // Added for S3 multipart uploads and conditional puts (issue 8), appended after the
    // earlier variants under the same rule: format version 1, earlier encodings unchanged.
    /// As `CompleteUpload`, with the object's user metadata given at completion (sealed
    /// again by the gateway, which then knows the part count that S3's ETag names) in
    /// place of the upload's.
    CompleteUploadAs {
        tenant: TenantId,
        upload: UploadId,
        parts: Vec<(u16, ETag)>,
        etag: ETag,
        sealed_user_metadata: Sealed,
    },
    /// As `PutObject`, applied only if the object's current state meets `condition`
    /// (S3's conditional writes: `If-None-Match: *`, `If-Match`), checked in the same
    /// apply step as the write, so two racing writers cannot both pass.
    PutObjectIf {
        tenant: TenantId,
        bucket: String,
        key: Vec<u8>,
        manifest: Manifest,
        condition: PutCondition,
    },
    // Added for the key service's policies (issue 7), under the same rule.
    /// Replaces the key service's KES policies and identity bindings (sealed under the
    /// root key by the key manager: the state holds them opaque).
    PutKeyPolicies {
        sealed_policies: Sealed,
    },
    // Added for the audit writer's runs (issue 8), under the same rule.
    /// Appends `records` at `first`, `first + 1`, ...: every one, and only if `first` is
    /// the next sequence number, or none. The appender chained them in memory; a racing
    /// append refuses the whole run, since a run applied in part would chain a record to
    /// one that never landed. Kept in the system shard: the key store's one group holds
    /// the chain. The last one's sequence number is the response.
    AppendAuditRun {
        first: u64,
        records: Vec<AuditRecord>,
    },
}

/// One audit record: as an [`Command::AppendAuditRun`] carries it, and as the state keeps
/// it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub scope: AuditScope,
    pub sealed_record: Sealed,
}

/// What a conditional put requires of the object it would replace. A condition that
/// needs an object where there is none is refused as not found, one that the object
/// fails as a conflict (`state::PRECONDITION_FAILED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PutCondition {
    /// No object has the key (`If-None-Match: *`).
    Absent,
    /// An object has the key and this ETag (`If-Match: "<etag>"`).
    ETagIs(ETag),
    /// An object has the key, whatever its ETag (`If-Match: *`).
    Present,
}

/// A command as it travels in a log entry: the format version, then the command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionedCommand {
    pub version: u16,
    pub command: Command,
}

/// The owner a command's state belongs to, which picks its shard: a tenant's metadata
/// lives in one group so its checks (tenant exists, bucket empty) never cross groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardKey {
    System,
    Tenant(TenantId),
}

impl Command {
    /// Which owner's shard must apply this command.
    pub fn shard_key(&self) -> ShardKey {
        match self {
            Command::CreateTenant { tenant, .. }
            | Command::DeleteTenant { tenant }
            | Command::CreateBucket { tenant, .. }
            | Command::DeleteBucket { tenant, .. }
            | Command::PutObject { tenant, .. }
            | Command::DeleteObject { tenant, .. }
            | Command::CreateUpload { tenant, .. }
            | Command::PutPart { tenant, .. }
            | Command::CompleteUpload { tenant, .. }
            | Command::CompleteUploadAs { tenant, .. }
            | Command::AbortUpload { tenant, .. }
            | Command::PutObjectIf { tenant, .. } => ShardKey::Tenant(*tenant),
            // Credentials are looked up by access key id alone, chunk refcounts by chunk id
            // alone: both live in the system shard, where every node can find them.
            Command::PutCredential { .. }
            | Command::DeleteCredential { .. }
            | Command::AdjustChunkRefs { .. } => ShardKey::System,
            Command::AdvanceKeyEpoch { scope: KeyScope::Tenant(tenant), .. }
            | Command::RetireKeyEpoch { scope: KeyScope::Tenant(tenant), .. }
            | Command::DestroyTenantKeys { tenant }
            | Command::AppendAudit { scope: AuditScope::Tenant(tenant), .. }
            | Command::AppendAuditAt { scope: AuditScope::Tenant(tenant), .. } => {
                ShardKey::Tenant(*tenant)
            }
            Command::AdvanceKeyEpoch { scope: KeyScope::System, .. }
            | Command::RetireKeyEpoch { scope: KeyScope::System, .. }
            | Command::AppendAudit { scope: AuditScope::System, .. }
            | Command::AppendAuditAt { scope: AuditScope::System, .. }
            | Command::PutKeyPolicies { .. }
            | Command::AppendAuditRun { .. } => ShardKey::System,
        }
    }

    /// The tenant whose inline-data budget this command spends, with the bytes it adds.
    pub fn inline_bytes(&self) -> Option<(TenantId, u64)> {
        match self {
            Command::PutObject {
                tenant,
                manifest: Manifest { body: ObjectBody::Inline(data), .. },
                ..
            }
            | Command::PutObjectIf {
                tenant,
                manifest: Manifest { body: ObjectBody::Inline(data), .. },
                ..
            } => Some((*tenant, data.0.len() as u64)),
            _ => None,
        }
    }

    /// Checks everything about the command that does not depend on the state.
    pub fn check_shape(&self) -> Result<(), Rejection> {
        match self {
            Command::CreateTenant { tenant, sealed_config, .. } => {
                check_tenant(tenant)?;
                check_sealed(sealed_config, "tenant config")
            }
            Command::DeleteTenant { tenant } => check_tenant(tenant),
            Command::CreateBucket { tenant, bucket } | Command::DeleteBucket { tenant, bucket } => {
                check_tenant(tenant)?;
                check_bucket_name(bucket)
            }
            Command::PutObject { tenant, bucket, key, manifest }
            | Command::PutObjectIf { tenant, bucket, key, manifest, .. } => {
                check_tenant(tenant)?;
                check_bucket_name(bucket)?;
                check_object_key(key)?;
                check_manifest(manifest)
            }
            Command::DeleteObject { tenant, bucket, key } => {
                check_tenant(tenant)?;
                check_bucket_name(bucket)?;
                check_object_key(key)
            }
            Command::CreateUpload { tenant, bucket, key, sealed_user_metadata, .. } => {
                check_tenant(tenant)?;
                check_bucket_name(bucket)?;
                check_object_key(key)?;
                check_sealed(sealed_user_metadata, "user metadata")
            }
            Command::PutPart { tenant, number, part, .. } => {
                check_tenant(tenant)?;
                check_part_number(*number)?;
                check_chunks(&part.chunks, part.size_bytes)
            }
            Command::CompleteUpload { tenant, parts, .. } => {
                check_tenant(tenant)?;
                check_completed_parts(parts)
            }
            Command::CompleteUploadAs { tenant, parts, sealed_user_metadata, .. } => {
                check_tenant(tenant)?;
                check_completed_parts(parts)?;
                check_sealed(sealed_user_metadata, "user metadata")
            }
            Command::AbortUpload { tenant, .. } => check_tenant(tenant),
            Command::PutCredential { access_key_id, tenant, workload, sealed_secret } => {
                check_access_key_id(access_key_id)?;
                check_tenant(tenant)?;
                if workload.is_empty() || workload.len() > WORKLOAD_NAME_MAX_BYTES {
                    return Err(Rejection::invalid("workload name length"));
                }
                if sealed_secret.0.is_empty() {
                    return Err(Rejection::invalid("empty credential secret"));
                }
                check_sealed(sealed_secret, "credential secret")
            }
            Command::DeleteCredential { access_key_id } => check_access_key_id(access_key_id),
            Command::AdjustChunkRefs { deltas } => check_deltas(deltas),
            Command::AdvanceKeyEpoch { scope, epoch, sealed_key } => {
                if let KeyScope::Tenant(tenant) = scope {
                    check_tenant(tenant)?;
                }
                if *epoch == 0 {
                    return Err(Rejection::invalid("key epoch 0"));
                }
                check_sealed(sealed_key, "key material")
            }
            Command::AppendAudit { scope, sealed_record }
            | Command::AppendAuditAt { scope, sealed_record, .. } => {
                if let AuditScope::Tenant(tenant) = scope {
                    check_tenant(tenant)?;
                }
                if let Command::AppendAuditAt { sequence: 0, .. } = self {
                    return Err(Rejection::invalid("audit sequence 0"));
                }
                if sealed_record.0.is_empty() {
                    return Err(Rejection::invalid("empty audit record"));
                }
                check_sealed(sealed_record, "audit record")
            }
            Command::RetireKeyEpoch { scope, epoch } => {
                if let KeyScope::Tenant(tenant) = scope {
                    check_tenant(tenant)?;
                }
                if *epoch == 0 {
                    return Err(Rejection::invalid("key epoch 0"));
                }
                Ok(())
            }
            Command::DestroyTenantKeys { tenant } => check_tenant(tenant),
            Command::PutKeyPolicies { sealed_policies } => {
                if sealed_policies.0.is_empty() {
                    return Err(Rejection::invalid("empty key policies"));
                }
                check_sealed(sealed_policies, "key policies")
            }
            Command::AppendAuditRun { first, records } => {
                if *first == 0 {
                    return Err(Rejection::invalid("audit sequence 0"));
                }
                if records.is_empty() || records.len() > AUDIT_RUN_RECORDS_MAX {
                    return Err(Rejection::invalid("an audit run with no records or too many"));
                }
                for record in records {
                    if let AuditScope::Tenant(tenant) = &record.scope {
                        check_tenant(tenant)?;
                    }
                    if record.sealed_record.0.is_empty() {
                        return Err(Rejection::invalid("empty audit record"));
                    }
                    check_sealed(&record.sealed_record, "audit record")?;
                }
                Ok(())
            }
        }
    }
}

impl VersionedCommand {
    /// Wraps a command in this build's format version.
    pub fn current(command: Command) -> VersionedCommand {
        VersionedCommand { version: COMMAND_FORMAT_VERSION, command }
    }

    /// Checks the version, the shape and the encoded size; returns the encoded size.
    pub fn check(&self) -> Result<usize, Rejection> {
        if self.version != COMMAND_FORMAT_VERSION {
            return Err(Rejection::UnknownVersion(self.version));
        }
        self.command.check_shape()?;
        let encoded_bytes = postcard::experimental::serialized_size(self)
            .map_err(|_| Rejection::invalid("encoding"))?;
        if encoded_bytes > COMMAND_MAX_BYTES {
            return Err(Rejection::TooLarge {
                size_bytes: encoded_bytes,
                max_bytes: COMMAND_MAX_BYTES,
            });
        }
        Ok(encoded_bytes)
    }
}

fn check_tenant(tenant: &TenantId) -> Result<(), Rejection> {
    if tenant.0 == [0; 16] {
        return Err(Rejection::invalid("nil tenant id"));
    }
    Ok(())
}

fn check_sealed(blob: &Sealed, _what: &'static str) -> Result<(), Rejection> {
    if blob.0.len() > SEALED_BLOB_MAX_BYTES {
        return Err(Rejection::TooLarge {
            size_bytes: blob.0.len(),
            max_bytes: SEALED_BLOB_MAX_BYTES,
        });
    }
    Ok(())
}

/// S3's bucket naming rules: 3 to 63 characters of lowercase letters, digits, '-' and '.',
/// starting and ending with a letter or digit, no "..", and not shaped like an IP address.
fn check_bucket_name(name: &str) -> Result<(), Rejection> {
    let bytes = name.as_bytes();
    if bytes.len() < BUCKET_NAME_MIN_BYTES || bytes.len() > BUCKET_NAME_MAX_BYTES {
        return Err(Rejection::invalid("bucket name length"));
    }
    let allowed = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'.';
    if !bytes.iter().all(allowed) {
        return Err(Rejection::invalid("bucket name character"));
    }
    let edge_ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !edge_ok(bytes[0]) || !edge_ok(bytes[bytes.len() - 1]) {
        return Err(Rejection::invalid("bucket name edge"));
    }
    if name.contains("..") {
        return Err(Rejection::invalid("bucket name \"..\""));
    }
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err(Rejection::invalid("bucket name is an IP address"));
    }
    Ok(())
}

fn check_object_key(key: &[u8]) -> Result<(), Rejection> {
    if key.is_empty() {
        return Err(Rejection::invalid("empty object key"));
    }
    if key.len() > OBJECT_KEY_MAX_BYTES {
        return Err(Rejection::TooLarge { size_bytes: key.len(), max_bytes: OBJECT_KEY_MAX_BYTES });
    }
    Ok(())
}

fn check_manifest(manifest: &Manifest) -> Result<(), Rejection> {
    check_sealed(&manifest.sealed_user_metadata, "user metadata")?;
    match &manifest.body {
        ObjectBody::Chunks(chunks) => check_chunks(chunks, manifest.size_bytes),
        ObjectBody::Inline(data) => {
            if data.0.len() > INLINE_OBJECT_MAX_BYTES {
                return Err(Rejection::TooLarge {
                    size_bytes: data.0.len(),
                    max_bytes: INLINE_OBJECT_MAX_BYTES,
                });
            }
            // The sealed form is at least as long as the plaintext it seals.
            if manifest.size_bytes > data.0.len() as u64 {
                return Err(Rejection::invalid("inline size larger than its sealed bytes"));
            }
            Ok(())
        }
    }
}

/// A chunk list must be bounded, hold no empty chunk, and add up to the stated size.
fn check_chunks(chunks: &[ChunkRef], size_bytes: u64) -> Result<(), Rejection> {
    if chunks.len() > MANIFEST_CHUNKS_MAX {
        return Err(Rejection::TooLarge {
            size_bytes: chunks.len(),
            max_bytes: MANIFEST_CHUNKS_MAX,
        });
    }
    if chunks.iter().any(|chunk| chunk.size_bytes == 0) {
        return Err(Rejection::invalid("empty chunk in a manifest"));
    }
    let total: u64 = chunks.iter().map(|chunk| u64::from(chunk.size_bytes)).sum();
    if total != size_bytes {
        return Err(Rejection::invalid("chunk sizes do not add up to the object size"));
    }
    Ok(())
}

fn check_part_number(number: u16) -> Result<(), Rejection> {
    if number == 0 || number > MULTIPART_PARTS_MAX {
        return Err(Rejection::invalid("part number outside 1 to 10,000"));
    }
    Ok(())
}

fn check_completed_parts(parts: &[(u16, ETag)]) -> Result<(), Rejection> {
    if parts.is_empty() {
        return Err(Rejection::invalid("no parts to complete"));
    }
    if parts.len() > usize::from(MULTIPART_PARTS_MAX) {
        return Err(Rejection::invalid("more parts than S3 allows"));
    }
    for (number, _) in parts {
        check_part_number(*number)?;
    }
    if !parts.windows(2).all(|pair| pair[0].0 < pair[1].0) {
        return Err(Rejection::invalid("parts not in ascending order"));
    }
    Ok(())
}

fn check_access_key_id(access_key_id: &str) -> Result<(), Rejection> {
    if access_key_id.is_empty() || access_key_id.len() > ACCESS_KEY_ID_MAX_BYTES {
        return Err(Rejection::invalid("access key id length"));
    }
    if !access_key_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(Rejection::invalid("access key id character"));
    }
    Ok(())
}

fn check_deltas(deltas: &[RefDelta]) -> Result<(), Rejection> {
    if deltas.is_empty() {
        return Err(Rejection::invalid("no refcount deltas"));
    }
    if deltas.len() > REFCOUNT_DELTAS_MAX {
        return Err(Rejection::TooLarge {
            size_bytes: deltas.len(),
            max_bytes: REFCOUNT_DELTAS_MAX,
        });
    }
    if deltas.iter().any(|delta| delta.delta == 0) {
        return Err(Rejection::invalid("zero refcount delta"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant() -> TenantId {
        TenantId([7; 16])
    }

    fn chunk(n: u8, size_bytes: u32) -> ChunkRef {
        ChunkRef { id: ChunkId([n; 32]), size_bytes }
    }

    fn put(manifest: Manifest) -> Command {
        Command::PutObject {
            tenant: tenant(),
            bucket: "photos".into(),
            key: b"a".to_vec(),
            manifest,
        }
    }

    fn manifest(body: ObjectBody, size_bytes: u64) -> Manifest {
        Manifest { size_bytes, body, sealed_user_metadata: Sealed::default(), etag: ETag([1; 16]) }
    }

    #[test]
    fn bucket_names_follow_s3_rules() {
        for good in ["abc", "my-bucket.logs", "a1b", &"x".repeat(63)] {
            assert_eq!(check_bucket_name(good), Ok(()), "{good}");
        }
        for bad in ["ab", "Abc", "-abc", "abc-", "a..b", "192.168.1.1", "a_b", &"x".repeat(64)] {
            assert!(check_bucket_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn manifests_must_add_up() {
        let ok = manifest(ObjectBody::Chunks(vec![chunk(1, 10), chunk(2, 5)]), 15);
        assert_eq!(put(ok).check_shape(), Ok(()));
        let short = manifest(ObjectBody::Chunks(vec![chunk(1, 10)]), 11);
        assert!(put(short).check_shape().is_err());
        let empty_chunk = manifest(ObjectBody::Chunks(vec![chunk(1, 0)]), 0);
        assert!(put(empty_chunk).check_shape().is_err());
    }

    #[test]
    fn inline_objects_are_bounded() {
        let fits = manifest(ObjectBody::Inline(Sealed(vec![0; INLINE_OBJECT_MAX_BYTES])), 4096);
        assert_eq!(put(fits).check_shape(), Ok(()));
        let big = manifest(ObjectBody::Inline(Sealed(vec![0; INLINE_OBJECT_MAX_BYTES + 1])), 1);
        assert!(matches!(put(big).check_shape(), Err(Rejection::TooLarge { .. })));
        let inline = manifest(ObjectBody::Inline(Sealed(vec![0; 100])), 10);
        assert_eq!(put(inline).inline_bytes(), Some((tenant(), 100)));
    }

    #[test]
    fn nil_tenant_and_oversized_blobs_are_refused() {
        let nil = Command::DeleteTenant { tenant: TenantId([0; 16]) };
        assert!(nil.check_shape().is_err());
        let blob = Sealed(vec![0; SEALED_BLOB_MAX_BYTES + 1]);
        let audit = Command::AppendAudit { scope: AuditScope::System, sealed_record: blob };
        assert!(matches!(audit.check_shape(), Err(Rejection::TooLarge { .. })));
    }

    #[test]
    fn completed_parts_must_ascend() {
        let upload = UploadId([3; 16]);
        let etag = ETag([0; 16]);
        let ok = Command::CompleteUpload {
            tenant: tenant(),
            upload,
            parts: vec![(1, etag), (3, etag)],
            etag,
        };
        assert_eq!(ok.check_shape(), Ok(()));
        let unordered = Command::CompleteUpload {
            tenant: tenant(),
            upload,
            parts: vec![(3, etag), (1, etag)],
            etag,
        };
        assert!(unordered.check_shape().is_err());
        let zero =
            Command::CompleteUpload { tenant: tenant(), upload, parts: vec![(0, etag)], etag };
        assert!(zero.check_shape().is_err());
    }

    #[test]
    fn versions_and_sizes_are_checked() {
        let command = Command::DeleteTenant { tenant: tenant() };
        let mut versioned = VersionedCommand::current(command);
        assert!(versioned.check().is_ok());
        versioned.version = COMMAND_FORMAT_VERSION + 1;
        assert_eq!(versioned.check(), Err(Rejection::UnknownVersion(COMMAND_FORMAT_VERSION + 1)));
    }

    #[test]
    fn key_manager_commands_are_appended_and_keep_earlier_encodings() {
        let index = |command: &Command| postcard::to_allocvec(command).unwrap()[0];
        let audit =
            Command::AppendAudit { scope: AuditScope::System, sealed_record: Sealed(vec![1]) };
        assert_eq!(index(&audit), 14, "the earlier variants keep their positions");
        let retire = Command::RetireKeyEpoch { scope: KeyScope::System, epoch: 1 };
        let destroy = Command::DestroyTenantKeys { tenant: tenant() };
        let at = Command::AppendAuditAt {
            scope: AuditScope::Tenant(tenant()),
            sequence: 1,
            sealed_record: Sealed(vec![1]),
        };
        assert_eq!((index(&retire), index(&destroy), index(&at)), (15, 16, 17));
        assert_eq!(destroy.shard_key(), ShardKey::Tenant(tenant()));
        assert_eq!(at.shard_key(), ShardKey::Tenant(tenant()));
        assert_eq!(retire.shard_key(), ShardKey::System);
        for bad in [
            Command::RetireKeyEpoch { scope: KeyScope::System, epoch: 0 },
            Command::DestroyTenantKeys { tenant: TenantId([0; 16]) },
            Command::AppendAuditAt {
                scope: AuditScope::System,
                sequence: 0,
                sealed_record: Sealed(vec![1]),
            },
            Command::AppendAuditAt {
                scope: AuditScope::System,
                sequence: 1,
                sealed_record: Sealed(vec![]),
            },
        ] {
            assert!(bad.check_shape().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_audit_run_is_appended_last_and_checked_record_by_record() {
        let record = |scope| AuditRecord { scope, sealed_record: Sealed(vec![1; 32]) };
        let run = Command::AppendAuditRun {
            first: 7,
            records: vec![record(AuditScope::System), record(AuditScope::Tenant(tenant()))],
        };
        assert_eq!(postcard::to_allocvec(&run).unwrap()[0], 21, "appended: variant 21");
        assert_eq!(run.shard_key(), ShardKey::System);
        assert_eq!(run.check_shape(), Ok(()));
        let full = vec![record(AuditScope::System); AUDIT_RUN_RECORDS_MAX];
        let at_most = Command::AppendAuditRun { first: 1, records: full.clone() };
        assert_eq!(at_most.check_shape(), Ok(()));
        let empty_record = AuditRecord { scope: AuditScope::System, sealed_record: Sealed(vec![]) };
        let huge_record = AuditRecord {
            scope: AuditScope::System,
            sealed_record: Sealed(vec![1; SEALED_BLOB_MAX_BYTES + 1]),
        };
        let run = |first, records| Command::AppendAuditRun { first, records };
        let system = || record(AuditScope::System);
        let nil_tenant = record(AuditScope::Tenant(TenantId([0; 16])));
        for (what, bad) in [
            ("sequence 0", run(0, vec![system()])),
            ("no records", run(1, Vec::new())),
            ("too many records", run(1, [full, vec![system()]].concat())),
            ("a nil tenant", run(1, vec![system(), nil_tenant])),
            ("an empty record", run(1, vec![system(), empty_record])),
            ("an oversized record", run(1, vec![huge_record])),
        ] {
            assert!(bad.check_shape().is_err(), "a run with {what} passed");
        }
    }

    #[test]
    fn key_policies_are_appended_after_the_s3_commands_and_checked() {
        let put = Command::PutKeyPolicies { sealed_policies: Sealed(vec![7; 64]) };
        assert_eq!(postcard::to_allocvec(&put).unwrap()[0], 20, "appended: variant 20");
        assert_eq!(put.shard_key(), ShardKey::System);
        assert_eq!(put.check_shape(), Ok(()));
        let empty = Command::PutKeyPolicies { sealed_policies: Sealed(Vec::new()) };
        assert!(matches!(empty.check_shape(), Err(Rejection::Invalid(_))));
        let huge =
            Command::PutKeyPolicies { sealed_policies: Sealed(vec![0; SEALED_BLOB_MAX_BYTES + 1]) };
        assert!(matches!(huge.check_shape(), Err(Rejection::TooLarge { .. })));
    }

    #[test]
    fn s3_commands_are_appended_and_checked() {
        let index = |command: &Command| postcard::to_allocvec(command).unwrap()[0];
        let etag = ETag([0; 16]);
        let complete = Command::CompleteUploadAs {
            tenant: tenant(),
            upload: UploadId([1; 16]),
            parts: vec![(1, etag)],
            etag,
            sealed_user_metadata: Sealed(vec![1]),
        };
        let Command::PutObject { tenant, bucket, key, manifest } =
            put(manifest(ObjectBody::Chunks(vec![chunk(1, 10)]), 10))
        else {
            unreachable!()
        };
        let put_if =
            Command::PutObjectIf { tenant, bucket, key, manifest, condition: PutCondition::Absent };
        assert_eq!((index(&complete), index(&put_if)), (18, 19));
        assert_eq!(complete.check_shape(), Ok(()));
        assert_eq!(put_if.check_shape(), Ok(()));
        assert_eq!(put_if.shard_key(), ShardKey::Tenant(tenant));
        let unordered = Command::CompleteUploadAs {
            tenant,
            upload: UploadId([1; 16]),
            parts: vec![(2, etag), (1, etag)],
            etag,
            sealed_user_metadata: Sealed(vec![1]),
        };
        assert!(unordered.check_shape().is_err());
        let Command::PutObjectIf { manifest, .. } = &put_if else { unreachable!() };
        let short = Manifest { size_bytes: 11, ..manifest.clone() };
        let bad = Command::PutObjectIf {
            tenant,
            bucket: "photos".into(),
            key: b"a".to_vec(),
            manifest: short,
            condition: PutCondition::ETagIs(etag),
        };
        assert!(bad.check_shape().is_err(), "a conditional put's manifest is checked too");
    }

    #[test]
    fn commands_route_to_their_owner() {
        assert_eq!(
            Command::DeleteTenant { tenant: tenant() }.shard_key(),
            ShardKey::Tenant(tenant())
        );
        let credential = Command::DeleteCredential { access_key_id: "AKIA1".into() };
        assert_eq!(credential.shard_key(), ShardKey::System);
    }
}
