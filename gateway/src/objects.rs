//! The object layer under the S3 front end: objects cut into chunks, sealed at the
//! gateway, stored in this node's engine or replicated through the fabric ([`Chunks`]),
//! and named by manifests committed through Raft.
//!
//! A put cuts the body into chunks of [`ObjectConfig::chunk_size_bytes`]; each gets its
//! id (SHA-256, or HMAC under the tenant's id key for an isolated tenant), its DEK from the
//! current master-key epoch (and the tenant secret when isolated), and is sealed and put
//! into the chunk store, which counts a second put of the same id as a second reference
//! (replicated: on W of its R nodes before the put goes on, see [`crate::chunks`]). Then
//! the manifest (chunk ids and sizes, the MD5 ETag, the user metadata sealed under the
//! tenant's KEK) is committed. A body of at most [`ObjectConfig::inline_max_bytes`] is
//! sealed under the KEK and kept in the manifest itself (no chunk). A get reads the
//! manifest from a linearizable view, then only the chunks a range covers.
//!
//! Overwrites and deletes release the chunks of the manifest the committed command
//! unlinked (`Applied::Replaced`), so each reference is released once whoever races
//! (replicated: on every replica of the chunk). A copy within a tenant names the source's
//! chunks again and takes one more reference on each (a second put of a stored envelope
//! counts as one); multipart uploads are in [`crate::multipart`].
//!
//! What it does not do yet: stream (a body is in memory, bounded by the caller), collect
//! chunks a crash left between their put and the manifest's commit, or references a
//! replica kept because it was down when they were released (both stay referenced until a
//! sweep exists), or find chunk nodes by itself (replicated chunks go to a fixed list).
//!
//! Invariants: no plaintext byte of a body or of user metadata reaches a chunk store or the
//! metadata log unsealed; errors carry no bucket or object names. Bucket names and object
//! keys themselves are plaintext in the metadata (listings need their order): DESIGN.md
//! wants names sealed too, which an order-preserving scheme would have to give; not yet.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use hyper::body::Bytes;

use kiseki_consensus::command::{
    ChunkId as MetaChunkId, ChunkRef, Command, DedupMode, ETag, Manifest, ObjectBody, PutCondition,
    Sealed, TenantId as MetaTenantId,
};
use kiseki_consensus::{Applied, ConsensusError, MetadataGroup, PRECONDITION_FAILED, Rejection};
use kiseki_engine::EngineHandle;
use kiseki_security::keymanager::{KeyManager, KeyManagerError, KeyStoreBackend};
use kiseki_security::{ChunkId, Dek, Envelope, SealParams, TenantId, TenantKey, TenantSecret};
use serde::{Deserialize, Serialize};

use crate::chunks::Chunks;
use crate::md5_lanes::Md5Lanes;

/// How objects are cut and kept.
#[derive(Debug, Clone, Copy)]
pub struct ObjectConfig {
    /// Plaintext bytes per chunk (the last chunk of an object may be shorter).
    pub chunk_size_bytes: usize,
    /// Bodies up to this size are sealed into the manifest instead of a chunk.
    pub inline_max_bytes: usize,
    /// Chunk puts and gets this node's requests have in the engine (or, replicated, in
    /// the fabric) at once; more wait their turn. Kept under the engine's free I/O
    /// buffers, which a busy engine would otherwise answer with `Busy` (503 SlowDown to an
    /// S3 client).
    pub engine_ops_max: usize,
}

impl Default for ObjectConfig {
    fn default() -> ObjectConfig {
        ObjectConfig { chunk_size_bytes: 1 << 20, inline_max_bytes: 4 << 10, engine_ops_max: 6 }
    }
}

/// What a user attached to an object: its content type and its `x-amz-meta-*` pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserMetadata {
    pub content_type: Option<String>,
    pub entries: BTreeMap<String, String>,
}

/// An object as a head or a get sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub size_bytes: u64,
    pub etag: [u8; 16],
    /// The part count of an object made by a multipart upload (S3's ETag then reads
    /// `"<md5 of the parts' md5s>-<parts>"`); `None` for a single put.
    pub parts: Option<u16>,
    /// When the put that made it was accepted (milliseconds since the Unix epoch).
    pub modified_unix_ms: u64,
    pub user: UserMetadata,
    /// The flexible checksums its PUT was checked against (none for multipart objects).
    pub checksums: ObjectChecksums,
}

/// The flexible checksums of an object's whole body, base64 as S3 shows them: those its
/// client sent (and the body was checked against) or asked to have computed. Kept sealed
/// with the user metadata: a digest of a small body can tell what the body is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectChecksums {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc32: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc32c: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc64nvme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha1: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl ObjectChecksums {
    pub fn is_empty(&self) -> bool {
        self == &ObjectChecksums::default()
    }

    /// The value of the algorithm S3 names `name` (`CRC32`, `SHA256`, ...).
    pub fn value(&self, name: &str) -> Option<&str> {
        match name {
            "CRC32" => self.crc32.as_deref(),
            "CRC32C" => self.crc32c.as_deref(),
            "CRC64NVME" => self.crc64nvme.as_deref(),
            "SHA1" => self.sha1.as_deref(),
            "SHA256" => self.sha256.as_deref(),
            _ => None,
        }
    }
}

/// What a put records beside the body: the user's metadata, the checksums the body was
/// checked against, and the condition the put is applied under.
#[derive(Debug, Clone, Copy)]
pub struct PutOptions<'a> {
    pub user: &'a UserMetadata,
    pub checksums: &'a ObjectChecksums,
    pub condition: Option<PutCondition>,
}

/// An object as a listing sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub key: Vec<u8>,
    pub size_bytes: u64,
    pub etag: [u8; 16],
    /// As [`ObjectMeta::parts`].
    pub parts: Option<u16>,
    pub modified_unix_ms: u64,
}

/// What is sealed under the tenant's KEK beside an object: the user's metadata and the
/// time of the put (kept out of the plaintext manifest).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SealedMeta {
    pub(crate) user: UserMetadata,
    pub(crate) modified_unix_ms: u64,
    /// Set when a multipart upload completes; absent in single puts (and older records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) parts: Option<u16>,
    /// Set by single puts that were checked against flexible checksums; absent in older
    /// records, which read as having none.
    #[serde(default, skip_serializing_if = "ObjectChecksums::is_empty")]
    pub(crate) checksums: ObjectChecksums,
}

/// Why an object operation failed; each maps to one S3 error.
#[derive(Debug)]
pub enum ObjectError {
    NoSuchTenant,
    NoSuchBucket,
    /// The bucket is another tenant's.
    AccessDenied,
    NoSuchKey,
    /// The bucket exists (whoever owns it: S3 says no more).
    BucketExists,
    BucketNotEmpty,
    InvalidBucketName(&'static str),
    InvalidKey(&'static str),
    /// The range starts at or past the end of an object of this size.
    InvalidRange {
        size_bytes: u64,
    },
    /// No such multipart upload (or not for this bucket and key, or not the caller's).
    NoSuchUpload,
    /// A part number outside 1 to 10,000.
    InvalidPartNumber,
    /// A completion names a part that was not uploaded, or with another ETag.
    InvalidPart,
    /// A completion lists its parts out of ascending order.
    InvalidPartOrder,
    /// A part other than the last is smaller than S3's minimum.
    EntityTooSmall,
    /// The object would be larger than this node keeps in one manifest.
    EntityTooLarge,
    /// A conditional request's condition does not hold (S3's 412).
    PreconditionFailed,
    /// A conditional GET or HEAD whose object has not changed (S3's 304).
    NotModified,
    /// The tenant has the most open multipart uploads allowed.
    TooManyUploads,
    /// The tenant's keys were crypto-shredded: nothing of it opens again.
    TenantKeysDestroyed,
    /// The node cannot take it now (a full queue, a device over its critical level, no
    /// replica of a chunk answering).
    Unavailable(String),
    /// Fewer replicas than the write quorum acknowledged a chunk: nothing was committed.
    QuorumNotReached {
        acked: usize,
        required: usize,
    },
    /// A stored chunk failed its checksum or its tag.
    Integrity(String),
    Internal(String),
}

impl fmt::Display for ObjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObjectError::NoSuchTenant => f.write_str("no such tenant"),
            ObjectError::NoSuchBucket => f.write_str("no such bucket"),
            ObjectError::AccessDenied => f.write_str("access denied"),
            ObjectError::NoSuchKey => f.write_str("no such key"),
            ObjectError::BucketExists => f.write_str("the bucket exists"),
            ObjectError::BucketNotEmpty => f.write_str("the bucket is not empty"),
            ObjectError::InvalidBucketName(why) => write!(f, "invalid bucket name: {why}"),
            ObjectError::InvalidKey(why) => write!(f, "invalid object key: {why}"),
            ObjectError::InvalidRange { size_bytes } => {
                write!(f, "the range is not satisfiable for an object of {size_bytes} bytes")
            }
            ObjectError::NoSuchUpload => f.write_str("no such upload"),
            ObjectError::InvalidPartNumber => f.write_str("part numbers are 1 to 10,000"),
            ObjectError::InvalidPart => f.write_str("a part is missing or has another ETag"),
            ObjectError::InvalidPartOrder => f.write_str("parts are not in ascending order"),
            ObjectError::EntityTooSmall => f.write_str("a part is smaller than the minimum"),
            ObjectError::EntityTooLarge => f.write_str("the object is larger than allowed"),
            ObjectError::PreconditionFailed => f.write_str("precondition failed"),
            ObjectError::NotModified => f.write_str("not modified"),
            ObjectError::TooManyUploads => f.write_str("too many open uploads"),
            ObjectError::TenantKeysDestroyed => f.write_str("tenant keys destroyed"),
            ObjectError::Unavailable(why) => write!(f, "unavailable: {why}"),
            ObjectError::QuorumNotReached { acked, required } => {
                write!(f, "{acked} of the {required} replicas a write needs acknowledged it")
            }
            ObjectError::Integrity(why) => write!(f, "integrity: {why}"),
            ObjectError::Internal(why) => write!(f, "internal: {why}"),
        }
    }
}

impl std::error::Error for ObjectError {}

/// Object keys S3 allows: 1 to 1024 bytes.
pub const OBJECT_KEY_MAX_BYTES: usize = 1024;

/// The object layer of one node; see the module's notes.
pub struct ObjectStore<S> {
    pub(crate) meta: Arc<MetadataGroup>,
    chunks: Chunks,
    /// One permit per chunk operation in flight; see [`ObjectConfig::engine_ops_max`].
    chunk_slots: tokio::sync::Semaphore,
    keys: Arc<Mutex<KeyManager<S>>>,
    /// The MD5s of bodies (ETags), several at once.
    pub(crate) md5: Md5Lanes,
    config: ObjectConfig,
}

impl<S> fmt::Debug for ObjectStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectStore").field("config", &self.config).finish_non_exhaustive()
    }
}

/// How one tenant's chunks are named and keyed.
enum Tenancy {
    Shared,
    Isolated { id_key: Box<TenantKey>, secret: TenantSecret },
}

impl<S: KeyStoreBackend + Send + 'static> ObjectStore<S> {
    /// An object store keeping its chunks in this node's `engine`.
    pub fn new(
        meta: Arc<MetadataGroup>,
        engine: EngineHandle,
        keys: Arc<Mutex<KeyManager<S>>>,
        config: ObjectConfig,
    ) -> ObjectStore<S> {
        ObjectStore::with_chunks(meta, Chunks::Local(engine), keys, config)
    }

    /// An object store keeping its chunks in `chunks`: this node's engine, or replicated
    /// over the fabric ([`Chunks::Replicated`]).
    pub fn with_chunks(
        meta: Arc<MetadataGroup>,
        chunks: Chunks,
        keys: Arc<Mutex<KeyManager<S>>>,
        config: ObjectConfig,
    ) -> ObjectStore<S> {
        assert!(config.chunk_size_bytes > 0, "chunks hold at least a byte");
        let chunk_slots = tokio::sync::Semaphore::new(config.engine_ops_max.max(1));
        let md5 = Md5Lanes::start().expect("a thread for the MD5 of bodies");
        ObjectStore { meta, chunks, chunk_slots, keys, md5, config }
    }

    /// Where this store keeps its chunks.
    pub fn chunks(&self) -> &Chunks {
        &self.chunks
    }

    /// Creates a tenant: its record, then its first KEK (and secret, when isolated).
    /// Creating a tenant that exists changes nothing.
    pub async fn create_tenant(
        &self,
        tenant: TenantId,
        dedup: DedupMode,
    ) -> Result<(), ObjectError> {
        ensure_tenant(&self.meta, &self.keys, tenant, dedup).await
    }

    pub async fn create_bucket(&self, tenant: TenantId, bucket: &str) -> Result<(), ObjectError> {
        check_bucket_name(bucket)?;
        let command =
            Command::CreateBucket { tenant: meta_tenant(tenant), bucket: bucket.to_owned() };
        match self.meta.propose(command).await {
            Ok(_) => Ok(()),
            Err(ConsensusError::Rejected(Rejection::AlreadyExists(_))) => {
                Err(ObjectError::BucketExists)
            }
            Err(ConsensusError::Rejected(Rejection::NotFound(_))) => Err(ObjectError::NoSuchTenant),
            Err(error) => Err(consensus_error(error)),
        }
    }

    pub async fn delete_bucket(&self, tenant: TenantId, bucket: &str) -> Result<(), ObjectError> {
        let command =
            Command::DeleteBucket { tenant: meta_tenant(tenant), bucket: bucket.to_owned() };
        match self.meta.propose(command).await {
            Ok(_) => Ok(()),
            Err(ConsensusError::Rejected(Rejection::NotFound(_))) => {
                Err(self.absent_bucket(bucket).await)
            }
            Err(ConsensusError::Rejected(Rejection::Conflict(_))) => {
                Err(ObjectError::BucketNotEmpty)
            }
            Err(error) => Err(consensus_error(error)),
        }
    }

    pub async fn bucket_exists(&self, tenant: TenantId, bucket: &str) -> Result<bool, ObjectError> {
        let view = self.meta.read().await.map_err(consensus_error)?;
        view.bucket_exists(&meta_tenant(tenant), bucket).map_err(consensus_error)
    }

    pub async fn list_buckets(&self, tenant: TenantId) -> Result<Vec<String>, ObjectError> {
        let view = self.meta.read().await.map_err(consensus_error)?;
        view.buckets(&meta_tenant(tenant)).map_err(consensus_error)
    }

    /// Stores `body` as `key`, replacing what was there; returns its ETag (MD5).
    pub async fn put_object(
        &self,
        tenant: TenantId,
        bucket: &str,
        key: &[u8],
        body: &[u8],
        user: &UserMetadata,
    ) -> Result<[u8; 16], ObjectError> {
        self.put_object_if(tenant, bucket, key, body, user, None).await
    }

    /// As [`Self::put_object`], applied only if the object at `key` meets `condition`
    /// (checked where the command is applied, so racing writers cannot both pass):
    /// PreconditionFailed when it does not, NoSuchKey when it needs an object and there is
    /// none. The body is stored first and its references given back on a refusal.
    pub async fn put_object_if(
        &self,
        tenant: TenantId,
        bucket: &str,
        key: &[u8],
        body: &[u8],
        user: &UserMetadata,
        condition: Option<PutCondition>,
    ) -> Result<[u8; 16], ObjectError> {
        let checksums = ObjectChecksums::default();
        let options = PutOptions { user, checksums: &checksums, condition };
        self.put_object_with(tenant, bucket, key, Bytes::copy_from_slice(body), options).await
    }

    /// As [`Self::put_object_if`], recording the checksums the caller checked `body`
    /// against (returned by heads and gets that ask for them).
    pub async fn put_object_with(
        &self,
        tenant: TenantId,
        bucket: &str,
        key: &[u8],
        body: Bytes,
        options: PutOptions<'_>,
    ) -> Result<[u8; 16], ObjectError> {
        let PutOptions { user, checksums, condition } = options;
        check_key(key)?;
        let etag = self.md5.digest(body.clone()).await;
        let owner = meta_tenant(tenant);
        // This node's applied state is enough to refuse early, before any chunk is stored:
        // the command is checked again where it is applied.
        let view = self.meta.local_view().map_err(consensus_error)?;
        if !view.bucket_exists(&owner, bucket).map_err(consensus_error)? {
            return Err(absent_bucket(&view, bucket));
        }
        drop(view);
        let sealed_meta = SealedMeta {
            user: user.clone(),
            modified_unix_ms: now_unix_ms(),
            parts: None,
            checksums: checksums.clone(),
        };
        let user_json =
            serde_json::to_vec(&sealed_meta).map_err(|e| ObjectError::Internal(e.to_string()))?;
        let sealed_user_metadata =
            Sealed(self.seal_for_tenant(tenant, &context(b"meta", bucket, key), &user_json)?);
        let (body_ref, stored) = if body.len() <= self.config.inline_max_bytes {
            let sealed = self.seal_for_tenant(tenant, &context(b"body", bucket, key), &body)?;
            (ObjectBody::Inline(Sealed(sealed)), Vec::new())
        } else {
            let chunks = self.store_chunks(tenant, &body).await?;
            (ObjectBody::Chunks(chunks.clone()), chunks)
        };
        let manifest = Manifest {
            size_bytes: body.len() as u64,
            body: body_ref,
            sealed_user_metadata,
            etag: ETag(etag),
        };
        let (name, key) = (bucket.to_owned(), key.to_vec());
        let command = match condition {
            None => Command::PutObject { tenant: owner, bucket: name, key, manifest },
            Some(condition) => {
                Command::PutObjectIf { tenant: owner, bucket: name, key, manifest, condition }
            }
        };
        self.commit_object(command, bucket, &stored).await?;
        Ok(etag)
    }

    /// Proposes `command`, a put of a manifest naming `referenced` (references this put
    /// took). The object it replaces gives its references back; a refused put gives back
    /// its own, since nothing names them.
    async fn commit_object(
        &self,
        command: Command,
        bucket: &str,
        referenced: &[ChunkRef],
    ) -> Result<(), ObjectError> {
        let error = match self.meta.propose(command).await {
            Ok(Applied::Replaced(old)) => {
                self.release_chunks(&old).await;
                return Ok(());
            }
            Ok(_) => return Ok(()),
            Err(error) => error,
        };
        self.release_refs(referenced).await;
        Err(match error {
            ConsensusError::Rejected(Rejection::Conflict(why)) if why == PRECONDITION_FAILED => {
                ObjectError::PreconditionFailed
            }
            ConsensusError::Rejected(Rejection::NotFound(what)) if what == "object" => {
                ObjectError::NoSuchKey
            }
            // Only now is the bucket looked up: to say whose it is, if anyone's.
            ConsensusError::Rejected(Rejection::NotFound(_)) => self.absent_bucket(bucket).await,
            other => consensus_error(other),
        })
    }

    /// The object's size, ETag and user metadata.
    pub async fn head_object(
        &self,
        tenant: TenantId,
        bucket: &str,
        key: &[u8],
    ) -> Result<ObjectMeta, ObjectError> {
        let manifest = self.manifest(tenant, bucket, key).await?;
        self.object_meta(tenant, bucket, key, &manifest)
    }

    /// The object's metadata and the bytes of `range` (`start..end`, clamped to the
    /// object; the whole object when `None`), reading only the chunks the range covers.
    pub async fn get_object(
        &self,
        tenant: TenantId,
        bucket: &str,
        key: &[u8],
        range: Option<(u64, u64)>,
    ) -> Result<(ObjectMeta, Vec<u8>), ObjectError> {
        let resolve = |meta: &ObjectMeta| {
            let size = meta.size_bytes;
            match range {
                None => Ok((0, size)),
                Some((start, _)) if start >= size && size > 0 => {
                    Err(ObjectError::InvalidRange { size_bytes: size })
                }
                Some((start, end)) => Ok((start.min(size), end.min(size))),
            }
        };
        let (meta, _, bytes) = self.get_object_with(tenant, bucket, key, resolve).await?;
        Ok((meta, bytes))
    }

    /// As [`Self::get_object`], with the range worked out from the object's metadata by
    /// `range` (`start..end`; S3's suffix and open ranges need the size; a conditional GET
    /// refuses here on the ETag or time), from the same read of the manifest that serves
    /// the bytes. Returns the range read too.
    pub async fn get_object_with(
        &self,
        tenant: TenantId,
        bucket: &str,
        key: &[u8],
        range: impl FnOnce(&ObjectMeta) -> Result<(u64, u64), ObjectError>,
    ) -> Result<(ObjectMeta, std::ops::Range<u64>, Vec<u8>), ObjectError> {
        let manifest = self.manifest(tenant, bucket, key).await?;
        let meta = self.object_meta(tenant, bucket, key, &manifest)?;
        let (start, end) = range(&meta)?;
        let bytes = match &manifest.body {
            ObjectBody::Inline(sealed) => {
                let body =
                    self.open_for_tenant(tenant, &context(b"body", bucket, key), &sealed.0)?;
                body[start as usize..end as usize].to_vec()
            }
            ObjectBody::Chunks(chunks) => self.read_range(tenant, chunks, start, end).await?,
        };
        Ok((meta, start..end, bytes))
    }

    pub async fn delete_object(
        &self,
        tenant: TenantId,
        bucket: &str,
        key: &[u8],
    ) -> Result<(), ObjectError> {
        check_key(key)?;
        let command = Command::DeleteObject {
            tenant: meta_tenant(tenant),
            bucket: bucket.to_owned(),
            key: key.to_vec(),
        };
        match self.meta.propose(command).await {
            Ok(Applied::Replaced(old)) => {
                self.release_chunks(&old).await;
                Ok(())
            }
            Ok(_) => Ok(()),
            // No such object under this tenant: say whether the bucket is not its own.
            Err(ConsensusError::Rejected(Rejection::NotFound(_))) => {
                let view = self.meta.read().await.map_err(consensus_error)?;
                if view.bucket_exists(&meta_tenant(tenant), bucket).map_err(consensus_error)? {
                    Err(ObjectError::NoSuchKey)
                } else {
                    Err(absent_bucket(&view, bucket))
                }
            }
            Err(error) => Err(consensus_error(error)),
        }
    }

    /// Copies `source` (bucket, key) to `target` within the tenant, with the source's user
    /// metadata or `replace`; returns the copy's metadata. A chunked body is not read: the
    /// copy's manifest names the same chunks, each given one more reference in the chunk
    /// store (a put of the stored envelope, which counts as a reference). An inline
    /// body is opened and sealed again, bound to its new name. The copy keeps the source's
    /// ETag (its bytes are the same; S3 computes a copy's anew). `source_check` sees the
    /// source's metadata from the read the copy is made from (S3's copy-source
    /// conditions) and may refuse.
    pub async fn copy_object(
        &self,
        tenant: TenantId,
        source: (&str, &[u8]),
        target: (&str, &[u8]),
        replace: Option<&UserMetadata>,
        source_check: impl FnOnce(&ObjectMeta) -> Result<(), ObjectError>,
    ) -> Result<ObjectMeta, ObjectError> {
        let ((source_bucket, source_key), (bucket, key)) = (source, target);
        check_key(key)?;
        let manifest = self.manifest(tenant, source_bucket, source_key).await?;
        let source_meta = self.object_meta(tenant, source_bucket, source_key, &manifest)?;
        source_check(&source_meta)?;
        let owner = meta_tenant(tenant);
        let view = self.meta.local_view().map_err(consensus_error)?;
        if !view.bucket_exists(&owner, bucket).map_err(consensus_error)? {
            return Err(absent_bucket(&view, bucket));
        }
        drop(view);
        let sealed_meta = SealedMeta {
            user: replace.cloned().unwrap_or(source_meta.user),
            modified_unix_ms: now_unix_ms(),
            parts: source_meta.parts,
            // The same bytes: the same checksums.
            checksums: source_meta.checksums.clone(),
        };
        let user_json =
            serde_json::to_vec(&sealed_meta).map_err(|e| ObjectError::Internal(e.to_string()))?;
        let sealed_user_metadata =
            Sealed(self.seal_for_tenant(tenant, &context(b"meta", bucket, key), &user_json)?);
        let (body, referenced) = match &manifest.body {
            ObjectBody::Inline(sealed) => {
                let plain = self.open_for_tenant(
                    tenant,
                    &context(b"body", source_bucket, source_key),
                    &sealed.0,
                )?;
                let sealed =
                    self.seal_for_tenant(tenant, &context(b"body", bucket, key), &plain)?;
                (ObjectBody::Inline(Sealed(sealed)), Vec::new())
            }
            ObjectBody::Chunks(chunks) => {
                self.add_refs(chunks).await?;
                (ObjectBody::Chunks(chunks.clone()), chunks.clone())
            }
        };
        let copy = Manifest {
            size_bytes: manifest.size_bytes,
            body,
            sealed_user_metadata,
            etag: manifest.etag,
        };
        let command = Command::PutObject {
            tenant: owner,
            bucket: bucket.to_owned(),
            key: key.to_vec(),
            manifest: copy,
        };
        let result = ObjectMeta {
            size_bytes: manifest.size_bytes,
            etag: manifest.etag.0,
            parts: sealed_meta.parts,
            modified_unix_ms: sealed_meta.modified_unix_ms,
            user: sealed_meta.user,
            checksums: sealed_meta.checksums,
        };
        self.commit_object(command, bucket, &referenced).await?;
        Ok(result)
    }

    /// Adds one reference to each chunk (all or none: a failure gives back those already
    /// added).
    async fn add_refs(&self, chunks: &[ChunkRef]) -> Result<(), ObjectError> {
        for (done, chunk) in chunks.iter().enumerate() {
            let added = match self.chunk_get(chunk.id.0).await {
                Ok(envelope) => self.chunk_put(envelope).await,
                Err(error) => Err(error),
            };
            if let Err(error) = added {
                self.release_refs(&chunks[..done]).await;
                return Err(error);
            }
        }
        Ok(())
    }

    /// Up to `limit` objects whose keys start with `prefix` and sort after `after`.
    pub async fn list_objects(
        &self,
        tenant: TenantId,
        bucket: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Listed>, ObjectError> {
        let view = self.meta.read().await.map_err(consensus_error)?;
        let owner = meta_tenant(tenant);
        if !view.bucket_exists(&owner, bucket).map_err(consensus_error)? {
            return Err(absent_bucket(&view, bucket));
        }
        let objects =
            view.objects(&owner, bucket, prefix, after, limit).map_err(consensus_error)?;
        let mut listed = Vec::with_capacity(objects.len());
        for (key, manifest) in objects {
            let meta = self.object_meta(tenant, bucket, &key, &manifest)?;
            listed.push(Listed {
                key,
                size_bytes: manifest.size_bytes,
                etag: manifest.etag.0,
                parts: meta.parts,
                modified_unix_ms: meta.modified_unix_ms,
            });
        }
        Ok(listed)
    }

    // ---- chunks ----

    pub(crate) async fn store_chunks(
        &self,
        tenant: TenantId,
        body: &[u8],
    ) -> Result<Vec<ChunkRef>, ObjectError> {
        let tenancy = self.tenancy(tenant).await?;
        let master = self.key_manager().current_master_key().map_err(key_error)?;
        let mut stored = Vec::with_capacity(body.len().div_ceil(self.config.chunk_size_bytes));
        for plaintext in body.chunks(self.config.chunk_size_bytes) {
            let envelope = match &tenancy {
                Tenancy::Shared => {
                    let dek = Dek::derive(&master, &ChunkId::of_plaintext(plaintext), None);
                    Envelope::seal(plaintext, &SealParams::new(&dek))
                }
                Tenancy::Isolated { id_key, secret } => {
                    let dek =
                        Dek::derive(&master, &ChunkId::isolated(id_key, plaintext), Some(secret));
                    Envelope::seal(plaintext, &SealParams::new(&dek))
                }
            }
            .map_err(|e| ObjectError::Internal(e.to_string()))?;
            let chunk = ChunkRef {
                id: MetaChunkId(*envelope.chunk_id().as_bytes()),
                size_bytes: plaintext.len() as u32,
            };
            if let Err(error) = self.chunk_put(envelope).await {
                self.release_refs(&stored).await;
                return Err(error);
            }
            stored.push(chunk);
        }
        Ok(stored)
    }

    /// The plaintext of `start..end` of an object made of `chunks`.
    async fn read_range(
        &self,
        tenant: TenantId,
        chunks: &[ChunkRef],
        start: u64,
        end: u64,
    ) -> Result<Vec<u8>, ObjectError> {
        let mut bytes = Vec::with_capacity((end - start) as usize);
        let mut tenancy = None;
        let mut offset = 0u64;
        for chunk in chunks {
            let (chunk_start, chunk_end) = (offset, offset + u64::from(chunk.size_bytes));
            offset = chunk_end;
            if chunk_end <= start || chunk_start >= end {
                continue;
            }
            if tenancy.is_none() {
                tenancy = Some(self.tenancy(tenant).await?);
            }
            let id = ChunkId::from_bytes(chunk.id.0);
            let envelope = self.chunk_get(chunk.id.0).await?;
            let master = self.key_manager().master_key(envelope.key_epoch()).map_err(key_error)?;
            let secret = match tenancy.as_ref().expect("set above") {
                Tenancy::Shared => None,
                Tenancy::Isolated { secret, .. } => Some(secret),
            };
            let dek = Dek::derive(&master, &id, secret);
            let plaintext = envelope
                .open(&dek)
                .map_err(|e| ObjectError::Integrity(format!("a chunk did not open: {e}")))?;
            let from = start.saturating_sub(chunk_start) as usize;
            let to = (end.min(chunk_end) - chunk_start) as usize;
            bytes.extend_from_slice(&plaintext[from..to]);
        }
        Ok(bytes)
    }

    /// The chunk store's put, once one of this node's chunk slots is free.
    async fn chunk_put(&self, envelope: Envelope) -> Result<(), ObjectError> {
        let _slot = self.chunk_slot().await?;
        self.chunks.put(envelope).await
    }

    /// The chunk store's get, once one of this node's chunk slots is free.
    async fn chunk_get(&self, id: [u8; 32]) -> Result<Envelope, ObjectError> {
        let _slot = self.chunk_slot().await?;
        self.chunks.get(id).await
    }

    async fn chunk_slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>, ObjectError> {
        // The semaphore is never closed; a closed one would mean the store is going away.
        let closed = |_| ObjectError::Unavailable("the object store is closing".to_owned());
        self.chunk_slots.acquire().await.map_err(closed)
    }

    pub(crate) async fn release_chunks(&self, manifest: &Manifest) {
        if let ObjectBody::Chunks(chunks) = &manifest.body {
            self.release_refs(chunks).await;
        }
    }

    /// Gives back one reference per chunk. A failure leaves a reference behind (space, not
    /// data, is lost), so it is logged, not returned.
    pub(crate) async fn release_refs(&self, chunks: &[ChunkRef]) {
        for chunk in chunks {
            if let Err(error) = self.chunks.release(chunk.id.0).await {
                tracing::warn!(%error, "releasing a chunk reference failed; its space stays in use");
            }
        }
    }

    // ---- keys and metadata ----

    async fn tenancy(&self, tenant: TenantId) -> Result<Tenancy, ObjectError> {
        // A tenant's dedup mode never changes after it is created: this node's view will do.
        let view = self.meta.local_view().map_err(consensus_error)?;
        let record = view
            .tenant(&meta_tenant(tenant))
            .map_err(consensus_error)?
            .ok_or(ObjectError::NoSuchTenant)?;
        match record.dedup {
            DedupMode::CrossTenant => {
                // A shredded tenant's chunks are shared ciphertext; its manifests are what
                // no longer open. Checked here too so a put fails at once.
                self.key_manager().tenant_epoch(tenant).map_err(key_error)?;
                Ok(Tenancy::Shared)
            }
            DedupMode::Isolated => {
                let mut keys = self.key_manager();
                let id_key = keys.tenant_id_key(tenant).map_err(key_error)?;
                let secret = keys.tenant_secret(tenant).map_err(key_error)?;
                Ok(Tenancy::Isolated { id_key: Box::new(id_key), secret })
            }
        }
    }

    /// The object's manifest: its chunks' ids and sizes (or its inline body, sealed), its
    /// size and ETag, from a linearizable read.
    pub async fn manifest(
        &self,
        tenant: TenantId,
        bucket: &str,
        key: &[u8],
    ) -> Result<Manifest, ObjectError> {
        let view = self.meta.read().await.map_err(consensus_error)?;
        let owner = meta_tenant(tenant);
        match view.object(&owner, bucket, key).map_err(consensus_error)? {
            Some(manifest) => Ok(manifest),
            None if view.bucket_exists(&owner, bucket).map_err(consensus_error)? => {
                Err(ObjectError::NoSuchKey)
            }
            None => Err(absent_bucket(&view, bucket)),
        }
    }

    /// Why a caller does not see `bucket`: another tenant's (AccessDenied, as S3 answers
    /// for another account's bucket) or nobody's (NoSuchBucket).
    pub async fn absent_bucket(&self, bucket: &str) -> ObjectError {
        match self.meta.read().await {
            Ok(view) => absent_bucket(&view, bucket),
            Err(error) => consensus_error(error),
        }
    }

    pub(crate) fn object_meta(
        &self,
        tenant: TenantId,
        bucket: &str,
        key: &[u8],
        manifest: &Manifest,
    ) -> Result<ObjectMeta, ObjectError> {
        let json = self.open_for_tenant(
            tenant,
            &context(b"meta", bucket, key),
            &manifest.sealed_user_metadata.0,
        )?;
        let sealed: SealedMeta = serde_json::from_slice(&json)
            .map_err(|_| ObjectError::Integrity("user metadata does not parse".to_owned()))?;
        Ok(ObjectMeta {
            size_bytes: manifest.size_bytes,
            etag: manifest.etag.0,
            parts: sealed.parts,
            modified_unix_ms: sealed.modified_unix_ms,
            user: sealed.user,
            checksums: sealed.checksums,
        })
    }

    pub(crate) fn seal_for_tenant(
        &self,
        tenant: TenantId,
        context: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, ObjectError> {
        self.key_manager().seal_for_tenant(tenant, context, plaintext).map_err(key_error)
    }

    pub(crate) fn open_for_tenant(
        &self,
        tenant: TenantId,
        context: &[u8],
        blob: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, ObjectError> {
        self.key_manager().open_for_tenant(tenant, context, blob).map_err(key_error)
    }

    fn key_manager(&self) -> MutexGuard<'_, KeyManager<S>> {
        lock(&self.keys)
    }
}

/// Makes `tenant`'s metadata record and its first KEK (with a tenant secret for an
/// isolated tenant) unless they exist: what a tenant needs before its data or credentials.
pub async fn ensure_tenant<S: KeyStoreBackend + Send + 'static>(
    meta: &MetadataGroup,
    keys: &Arc<Mutex<KeyManager<S>>>,
    tenant: TenantId,
    dedup: DedupMode,
) -> Result<(), ObjectError> {
    // The record first: a key store in the metadata refuses keys of an unknown tenant.
    // A start that stops between the two finishes on the next call.
    let command = Command::CreateTenant {
        tenant: meta_tenant(tenant),
        dedup,
        sealed_config: Sealed::default(),
    };
    match meta.propose(command).await {
        Ok(_) | Err(ConsensusError::Rejected(Rejection::AlreadyExists(_))) => {}
        Err(error) => return Err(consensus_error(error)),
    }
    let isolated = matches!(dedup, DedupMode::Isolated);
    // A key store in the metadata proposes, and waits, on a thread of its own.
    let keys = Arc::clone(keys);
    let created =
        tokio::task::spawn_blocking(move || lock(&keys).create_tenant_kek(tenant, isolated))
            .await
            .map_err(|e| ObjectError::Internal(format!("key manager task: {e}")))?;
    match created {
        Ok(_) | Err(KeyManagerError::AlreadyExists { .. }) => Ok(()),
        Err(error) => Err(key_error(error)),
    }
}

/// Now, in milliseconds since the Unix epoch (0 for a clock before it).
pub(crate) fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// The key manager behind its lock, for every front end of this crate.
pub(crate) fn lock<S>(keys: &Mutex<KeyManager<S>>) -> MutexGuard<'_, KeyManager<S>> {
    // A panic while holding the lock leaves no half-made key (each call is one store
    // operation), so a poisoned lock is taken over.
    keys.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What a sealed blob of an object is bound to: its kind, bucket and key, with lengths so
/// that no two (bucket, key) pairs give the same bytes.
pub(crate) fn context(kind: &[u8], bucket: &str, key: &[u8]) -> Vec<u8> {
    let mut context = Vec::with_capacity(kind.len() + bucket.len() + key.len() + 4);
    context.extend_from_slice(kind);
    context.push(bucket.len() as u8);
    context.extend_from_slice(bucket.as_bytes());
    context.extend_from_slice(&(key.len() as u16).to_be_bytes());
    context.extend_from_slice(key);
    context
}

pub(crate) fn absent_bucket(view: &kiseki_consensus::StateView, bucket: &str) -> ObjectError {
    match view.bucket_owner(bucket) {
        Ok(Some(_)) => ObjectError::AccessDenied,
        Ok(None) => ObjectError::NoSuchBucket,
        Err(error) => consensus_error(error),
    }
}

pub(crate) fn meta_tenant(tenant: TenantId) -> MetaTenantId {
    MetaTenantId(*tenant.as_bytes())
}

/// S3's bucket naming rules: 3 to 63 characters of lowercase letters, digits, dots and
/// hyphens, starting and ending with a letter or digit, no two adjacent dots, not an IPv4
/// address.
pub fn check_bucket_name(name: &str) -> Result<(), ObjectError> {
    let bytes = name.as_bytes();
    if !(3..=63).contains(&bytes.len()) {
        return Err(ObjectError::InvalidBucketName("3 to 63 characters"));
    }
    let allowed = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'.' || *b == b'-';
    if !bytes.iter().all(allowed) {
        return Err(ObjectError::InvalidBucketName(
            "lowercase letters, digits, dots and hyphens only",
        ));
    }
    let edge = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !edge(bytes[0]) || !edge(bytes[bytes.len() - 1]) {
        return Err(ObjectError::InvalidBucketName("starts and ends with a letter or digit"));
    }
    if name.contains("..") {
        return Err(ObjectError::InvalidBucketName("no two adjacent dots"));
    }
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err(ObjectError::InvalidBucketName("not an IP address"));
    }
    Ok(())
}

pub(crate) fn check_key(key: &[u8]) -> Result<(), ObjectError> {
    if key.is_empty() || key.len() > OBJECT_KEY_MAX_BYTES {
        return Err(ObjectError::InvalidKey("1 to 1024 bytes"));
    }
    if std::str::from_utf8(key).is_err() {
        return Err(ObjectError::InvalidKey("UTF-8"));
    }
    Ok(())
}

pub(crate) fn key_error(error: KeyManagerError) -> ObjectError {
    match error {
        KeyManagerError::TenantKeysDestroyed { .. } => ObjectError::TenantKeysDestroyed,
        KeyManagerError::NoKey { .. } => ObjectError::NoSuchTenant,
        KeyManagerError::OpenFailed => {
            ObjectError::Integrity("sealed metadata did not open".to_owned())
        }
        other => ObjectError::Internal(other.to_string()),
    }
}

pub(crate) fn consensus_error(error: ConsensusError) -> ObjectError {
    match error {
        ConsensusError::Rejected(rejection) => {
            ObjectError::Internal(format!("metadata refused: {rejection}"))
        }
        other => ObjectError::Unavailable(format!("metadata: {other}")),
    }
}
