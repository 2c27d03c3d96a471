//! The S3 front end: `s3s` parses requests, checks SigV4 against the caller's secret, and
//! calls [`KisekiS3`], which serves them from the object layer ([`crate::objects`]).
//!
//! - Credentials ([`S3Credentials`]): an access key maps to one tenant and workload; its
//!   secret is sealed under the tenant's KEK in the metadata (so a shredded tenant's keys
//!   stop working with its data). `s3s` compares signatures in constant time.
//! - Operations served: ListBuckets, CreateBucket, DeleteBucket, HeadBucket, PutObject,
//!   GetObject (with ranges), HeadObject, DeleteObject, ListObjectsV2 (prefix, delimiter,
//!   continuation, max-keys, start-after); multipart uploads ([`crate::multipart`]):
//!   CreateMultipartUpload, UploadPart, CompleteMultipartUpload (S3's `<md5 of md5s>-N`
//!   ETag), AbortMultipartUpload, ListParts, ListMultipartUploads (prefix and markers; no
//!   delimiter), UploadPartCopy (a range or the whole of an object of the same tenant, with
//!   the copy-source conditions; the bytes are read and stored as the part); CopyObject within a tenant (COPY or REPLACE metadata; the copy names the
//!   same chunks, one more reference each), DeleteObjects (quiet or verbose, per-key
//!   errors), ListObjects v1 (marker, prefix, delimiter, max-keys), ListObjectVersions
//!   (versioning is off: every object is its "null" version), GetBucketLocation (one
//!   region, shown as us-east-1's empty constraint). Everything else answers
//!   NotImplemented.
//! - Copies never cross tenants: a source or target bucket of another tenant is
//!   AccessDenied, as is a DeleteObjects or a listing of another tenant's bucket.
//! - Conditional requests: GET and HEAD take If-Match, If-None-Match (304),
//!   If-Modified-Since (304) and If-Unmodified-Since (412 PreconditionFailed), checked on
//!   the manifest read that serves the answer; CopyObject takes the copy-source forms
//!   (any failure 412), checked on the source read the copy is made from; PutObject takes
//!   `If-None-Match: *` and `If-Match` (an ETag or `*`; NoSuchKey without an object),
//!   checked in the metadata state machine where the put is applied (`PutObjectIf`), so
//!   two racing conditional writers cannot both pass. Not conditional yet:
//!   CompleteMultipartUpload's If-Match/If-None-Match and DeleteObject's.
//! - An upload is seen only by its tenant: another tenant naming its bucket gets
//!   AccessDenied, naming its upload id through a bucket of its own NoSuchUpload.
//! - A tenant sees only its own buckets: another tenant's bucket is AccessDenied (as S3
//!   answers for another account's bucket), and a name taken by anyone is
//!   BucketAlreadyExists, which does not say by whom.
//! - Bodies are read whole, up to [`S3_OBJECT_MAX_BYTES`] (EntityTooLarge beyond), parts
//!   up to [`S3_PART_MAX_BYTES`]; parts other than the last are at least
//!   [`crate::constants::S3_PART_MIN_BYTES`] (EntityTooSmall). Before anything is stored,
//!   a body is checked against its payload hash, its flexible checksums (headers or
//!   trailers) and its Content-MD5 ([`crate::s3_body`]); a PUT's checksums are kept sealed
//!   with its metadata and returned by GET (whole objects) and HEAD with
//!   `x-amz-checksum-mode: ENABLED`. An UploadPart's are checked and returned, not kept.
//! - SigV4 itself (header and presigned, `x-amz-date` within
//!   [`crate::constants::S3_CLOCK_SKEW_MAX_SECS`], chunk signatures) is `s3s`'s; the front
//!   ([`crate::s3_front`]) refuses presigned URLs over seven days, SigV2 in a header,
//!   declared bodies over the bound, and requests over [`crate::constants::S3_REQUESTS_MAX`]
//!   or [`crate::constants::S3_BODY_BUDGET_BYTES`] (503 SlowDown), and names buckets by host
//!   for virtual-host style.
//!
//! [`S3Server`] accepts TLS 1.3 connections (no client certificate: SigV4 authenticates
//! each request) and serves each over HTTP/1.1 with TCP_NODELAY, headers bounded by
//! [`S3_HEADER_BYTES_MAX`].
//!
//! What it does not do yet: versioning, ListMultipartUploads with a delimiter, streaming
//! bodies into the engine (a body is in memory, hence the 256 MiB bound), composite
//! checksums of multipart objects. They are issue 8's remaining points.

use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use kiseki_consensus::command::{
    Command, ETag as MetaETag, PutCondition, Sealed, TenantId as MetaTenantId,
};
use kiseki_consensus::{ConsensusError, MetadataGroup};
use kiseki_security::TenantId;
use kiseki_security::keymanager::{KeyManager, KeyStoreBackend};
use s3s::auth::{S3Auth, SecretKey};
use s3s::dto::{
    AbortMultipartUploadInput, AbortMultipartUploadOutput, Bucket, ChecksumMode, ChecksumType,
    CommonPrefix, CompleteMultipartUploadInput, CompleteMultipartUploadOutput, CopyObjectInput,
    CopyObjectOutput, CopyObjectResult, CopyPartResult, CopySource, CreateBucketInput,
    CreateBucketOutput, CreateMultipartUploadInput, CreateMultipartUploadOutput, DeleteBucketInput,
    DeleteBucketOutput, DeleteObjectInput, DeleteObjectOutput, DeleteObjectsInput,
    DeleteObjectsOutput, DeletedObject, ETag as S3ETag, ETagCondition, Error as S3DeleteError,
    GetBucketLocationInput, GetBucketLocationOutput, GetBucketVersioningInput,
    GetBucketVersioningOutput, GetObjectInput, GetObjectOutput, HeadBucketInput, HeadBucketOutput,
    HeadObjectInput, HeadObjectOutput, ListBucketsInput, ListBucketsOutput,
    ListMultipartUploadsInput, ListMultipartUploadsOutput, ListObjectVersionsInput,
    ListObjectVersionsOutput, ListObjectsInput, ListObjectsOutput, ListObjectsV2Input,
    ListObjectsV2Output, ListPartsInput, ListPartsOutput, MultipartUpload, Object, ObjectVersion,
    Part, PutObjectInput, PutObjectOutput, Range, StreamingBlob, Timestamp, UploadPartCopyInput,
    UploadPartCopyOutput, UploadPartInput, UploadPartOutput,
};
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, s3_error};
use zeroize::Zeroizing;

pub use crate::constants::{S3_CONNECTIONS_MAX, S3_HEADER_BYTES_MAX, S3_OBJECT_MAX_BYTES};
use crate::constants::{
    S3_HEADER_TIMEOUT_SECS, S3_LIST_PARTS_MAX, S3_LIST_UPLOADS_MAX, S3_PART_MAX_BYTES, S3_PARTS_MAX,
};
use crate::hex::encode as hex;
use crate::objects::{
    ObjectChecksums, ObjectError, ObjectMeta, ObjectStore, PutOptions, UserMetadata,
};
use crate::s3_body::{Claims, read_checked};
use crate::s3_front::{Bounded, S3Limits};

/// Keys a listing returns at most, whatever `max-keys` asks (S3's limit).
const LIST_KEYS_MAX: usize = 1000;

/// Access keys: this prefix and 18 characters of base32.
const ACCESS_KEY_PREFIX: &str = "KSK";
const ACCESS_KEY_RANDOM_BYTES: usize = 11;
/// Secrets: 30 random bytes, 40 characters of base64url.
const SECRET_RANDOM_BYTES: usize = 30;

/// S3 access keys and their secrets, in the metadata; see the module's notes.
pub struct S3Credentials<S> {
    meta: Arc<MetadataGroup>,
    keys: Arc<Mutex<KeyManager<S>>>,
}

impl<S> std::fmt::Debug for S3Credentials<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials").finish_non_exhaustive()
    }
}

/// An access key as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyListing {
    pub access_key: String,
    pub workload: String,
}

/// Who an access key belongs to.
#[derive(Debug, Clone)]
pub struct KeyOwner {
    pub tenant: TenantId,
    pub workload: String,
}

impl<S: KeyStoreBackend + Send + 'static> S3Credentials<S> {
    pub fn new(meta: Arc<MetadataGroup>, keys: Arc<Mutex<KeyManager<S>>>) -> S3Credentials<S> {
        S3Credentials { meta, keys }
    }

    /// Makes a new access key for `workload` of `tenant`; returns it and its secret (shown
    /// once: only its sealed form is kept).
    pub async fn create(
        &self,
        tenant: TenantId,
        workload: &str,
    ) -> Result<(String, Zeroizing<String>), ObjectError> {
        let mut id_bytes = [0u8; ACCESS_KEY_RANDOM_BYTES];
        let mut secret_bytes = Zeroizing::new([0u8; SECRET_RANDOM_BYTES]);
        aws_lc_rs::rand::fill(&mut id_bytes)
            .and_then(|()| aws_lc_rs::rand::fill(&mut secret_bytes[..]))
            .map_err(|_| ObjectError::Internal("the system RNG failed".to_owned()))?;
        let access_key = format!("{ACCESS_KEY_PREFIX}{}", base32(&id_bytes));
        let secret = Zeroizing::new(URL_SAFE_NO_PAD.encode(&secret_bytes[..]));
        let sealed = self
            .lock()
            .seal_for_tenant(tenant, &secret_context(&access_key), secret.as_bytes())
            .map_err(|e| ObjectError::Internal(e.to_string()))?;
        let command = Command::PutCredential {
            access_key_id: access_key.clone(),
            tenant: MetaTenantId(*tenant.as_bytes()),
            workload: workload.to_owned(),
            sealed_secret: Sealed(sealed),
        };
        self.meta.propose(command).await.map_err(|e| ObjectError::Unavailable(e.to_string()))?;
        Ok((access_key, secret))
    }

    /// The owner and secret of `access_key`; `None` for a key nobody holds.
    pub async fn lookup(
        &self,
        access_key: &str,
    ) -> Result<Option<(KeyOwner, Zeroizing<String>)>, ObjectError> {
        let view = self.meta.read().await.map_err(|e| ObjectError::Unavailable(e.to_string()))?;
        let Some(record) = view.credential(access_key).map_err(unavailable)? else {
            return Ok(None);
        };
        let Some(tenant) = TenantId::new(record.tenant.0) else {
            return Ok(None);
        };
        let secret = self
            .lock()
            .open_for_tenant(tenant, &secret_context(access_key), &record.sealed_secret.0)
            .map_err(|e| match e {
                kiseki_security::keymanager::KeyManagerError::TenantKeysDestroyed { .. } => {
                    ObjectError::TenantKeysDestroyed
                }
                other => ObjectError::Internal(other.to_string()),
            })?;
        let secret = String::from_utf8(secret.to_vec())
            .map_err(|_| ObjectError::Integrity("a stored secret is not text".to_owned()))?;
        Ok(Some((KeyOwner { tenant, workload: record.workload }, Zeroizing::new(secret))))
    }

    /// Who holds `access_key`, from this node's applied state and without opening the
    /// secret: for a request whose signature was already checked against [`Self::lookup`],
    /// which read at least this far.
    pub fn owner(&self, access_key: &str) -> Result<Option<KeyOwner>, ObjectError> {
        let view = self.meta.local_view().map_err(unavailable)?;
        let Some(record) = view.credential(access_key).map_err(unavailable)? else {
            return Ok(None);
        };
        Ok(TenantId::new(record.tenant.0)
            .map(|tenant| KeyOwner { tenant, workload: record.workload }))
    }

    /// Up to `limit` access keys of `tenant` with their workloads (never a secret), in
    /// access-key order.
    pub async fn list(
        &self,
        tenant: TenantId,
        limit: usize,
    ) -> Result<Vec<KeyListing>, ObjectError> {
        let view = self.meta.read().await.map_err(unavailable)?;
        let records =
            view.credentials_of(&MetaTenantId(*tenant.as_bytes()), limit).map_err(unavailable)?;
        Ok(records
            .into_iter()
            .map(|(access_key, record)| KeyListing { access_key, workload: record.workload })
            .collect())
    }

    /// Removes `access_key` if `tenant` holds it. `false` for a key that is another
    /// tenant's or nobody's: the same answer, so a caller learns nothing of others' keys.
    /// (An access key is never reused and never changes owner, so the check and the
    /// removal need not be one command.)
    pub async fn delete(&self, tenant: TenantId, access_key: &str) -> Result<bool, ObjectError> {
        let view = self.meta.read().await.map_err(unavailable)?;
        match view.credential(access_key).map_err(unavailable)? {
            Some(record) if record.tenant.0 == *tenant.as_bytes() => {}
            _ => return Ok(false),
        }
        drop(view);
        let command = Command::DeleteCredential { access_key_id: access_key.to_owned() };
        match self.meta.propose(command).await {
            Ok(_) => Ok(true),
            Err(ConsensusError::Rejected(kiseki_consensus::Rejection::NotFound(_))) => Ok(false),
            Err(error) => Err(unavailable(error)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, KeyManager<S>> {
        crate::objects::lock(&self.keys)
    }
}

fn unavailable(error: ConsensusError) -> ObjectError {
    ObjectError::Unavailable(error.to_string())
}

fn secret_context(access_key: &str) -> Vec<u8> {
    let mut context = b"s3-secret:".to_vec();
    context.extend_from_slice(access_key.as_bytes());
    context
}

/// RFC 4648 base32 without padding: uppercase letters and digits 2-7.
fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(bytes.len() * 8 / 5 + 1);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &byte in bytes {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// `s3s`'s view of our credentials: the secret of an access key, or InvalidAccessKeyId.
pub struct CredentialAuth<S>(pub Arc<S3Credentials<S>>);

impl<S> std::fmt::Debug for CredentialAuth<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialAuth").finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl<S: KeyStoreBackend + Send + 'static> S3Auth for CredentialAuth<S> {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        match self.0.lookup(access_key).await {
            Ok(Some((_, secret))) => Ok(SecretKey::from(secret.as_str())),
            Ok(None) => Err(s3_error!(InvalidAccessKeyId)),
            Err(ObjectError::TenantKeysDestroyed) => Err(s3_error!(InvalidAccessKeyId)),
            Err(error) => Err(object_error(error)),
        }
    }
}

/// The S3 operations over the object layer; see the module's notes.
pub struct KisekiS3<S> {
    objects: Arc<ObjectStore<S>>,
    credentials: Arc<S3Credentials<S>>,
}

impl<S> std::fmt::Debug for KisekiS3<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KisekiS3").finish_non_exhaustive()
    }
}

impl<S: KeyStoreBackend + Send + 'static> KisekiS3<S> {
    pub fn new(objects: Arc<ObjectStore<S>>, credentials: Arc<S3Credentials<S>>) -> KisekiS3<S> {
        KisekiS3 { objects, credentials }
    }

    /// Up to `max_keys` entries of a bucket's listing: objects whose keys start with
    /// `prefix` and sort after `after`, those with `delimiter` after the prefix rolled up
    /// into one common prefix each (S3's listing for ListObjects, V2 and versions).
    async fn list_keys(
        &self,
        tenant: TenantId,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        mut after: Option<Vec<u8>>,
        max_keys: usize,
    ) -> S3Result<Listing> {
        let mut listing = Listing::default();
        'pages: loop {
            let page = self
                .objects
                .list_objects(tenant, bucket, prefix.as_bytes(), after.as_deref(), LIST_KEYS_MAX)
                .await
                .map_err(object_error)?;
            let full_page = page.len() == LIST_KEYS_MAX;
            for listed in page {
                let key = utf8_key(&listed.key)?;
                let grouped = delimiter.and_then(|d| {
                    key[prefix.len()..]
                        .find(d)
                        .map(|at| key[..prefix.len() + at + d.len()].to_owned())
                });
                if let Some(common) = &grouped
                    && listing.prefixes.last() == Some(common)
                {
                    after = Some(listed.key);
                    continue;
                }
                if listing.objects.len() + listing.prefixes.len() == max_keys {
                    listing.truncated = true;
                    break 'pages;
                }
                after = Some(listed.key.clone());
                match grouped {
                    Some(common) => listing.prefixes.push(common),
                    None => listing.objects.push(listed),
                }
            }
            if !full_page {
                break;
            }
        }
        listing.after = after;
        Ok(listing)
    }

    /// Ok if `tenant` has `bucket`; NoSuchBucket, or AccessDenied for another tenant's.
    async fn own_bucket(&self, tenant: TenantId, bucket: &str) -> S3Result<()> {
        match self.objects.bucket_exists(tenant, bucket).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(object_error(self.objects.absent_bucket(bucket).await)),
            Err(error) => Err(object_error(error)),
        }
    }

    /// The tenant of a signed request; anonymous requests are refused.
    async fn tenant<T>(&self, request: &S3Request<T>) -> S3Result<TenantId> {
        let Some(credentials) = &request.credentials else {
            return Err(s3_error!(AccessDenied, "anonymous requests are not served"));
        };
        // The access hook found the owner already (`crate::audit::AuditAccess`).
        if let Some(owner) = request.extensions.get::<KeyOwner>() {
            return Ok(owner.tenant);
        }
        // s3s checked the signature with the secret from `lookup`; only the owner is needed.
        match self.credentials.owner(&credentials.access_key) {
            Ok(Some(owner)) => Ok(owner.tenant),
            Ok(None) => Err(s3_error!(InvalidAccessKeyId)),
            Err(error) => Err(object_error(error)),
        }
    }
}

#[async_trait::async_trait]
impl<S: KeyStoreBackend + Send + 'static> S3 for KisekiS3<S> {
    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let tenant = self.tenant(&req).await?;
        let names = self.objects.list_buckets(tenant).await.map_err(object_error)?;
        let buckets = names
            .into_iter()
            .map(|name| Bucket {
                name: Some(name),
                // Creation times are not kept yet; the epoch says so rather than inventing one.
                creation_date: Some(Timestamp::from(UNIX_EPOCH)),
                ..Bucket::default()
            })
            .collect();
        Ok(S3Response::new(ListBucketsOutput { buckets: Some(buckets), ..Default::default() }))
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let tenant = self.tenant(&req).await?;
        let bucket = &req.input.bucket;
        self.objects.create_bucket(tenant, bucket).await.map_err(object_error)?;
        let location = Some(format!("/{bucket}"));
        Ok(S3Response::new(CreateBucketOutput { location }))
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        let tenant = self.tenant(&req).await?;
        self.objects.delete_bucket(tenant, &req.input.bucket).await.map_err(object_error)?;
        Ok(S3Response::new(DeleteBucketOutput::default()))
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        let tenant = self.tenant(&req).await?;
        self.own_bucket(tenant, &req.input.bucket).await?;
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let tenant = self.tenant(&req).await?;
        let mut input = req.input;
        let claims = claims_of!(input, req.headers);
        // Checked whole before anything is stored: a mismatch stores nothing.
        let (body, checksums) = read_checked(
            input.body.take(),
            S3_OBJECT_MAX_BYTES,
            &claims,
            req.trailing_headers.as_ref(),
        )
        .await?;
        let user = UserMetadata {
            content_type: input.content_type.map(|t| t.to_string()),
            entries: input.metadata.unwrap_or_default().into_iter().collect(),
        };
        let condition = put_condition(input.if_match.as_ref(), input.if_none_match.as_ref())?;
        let options = PutOptions { user: &user, checksums: &checksums, condition };
        let etag = self
            .objects
            .put_object_with(tenant, &input.bucket, input.key.as_bytes(), body, options)
            .await
            .map_err(object_error)?;
        let mut output = PutObjectOutput { e_tag: Some(etag_of(etag)), ..Default::default() };
        set_checksums!(output, checksums, checksum_type);
        Ok(S3Response::new(output))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let tenant = self.tenant(&req).await?;
        let input = &req.input;
        let key = input.key.as_bytes();
        let conditions = ReadConditions {
            if_match: input.if_match.as_ref(),
            if_none_match: input.if_none_match.as_ref(),
            if_modified_since: input.if_modified_since.as_ref(),
            if_unmodified_since: input.if_unmodified_since.as_ref(),
        };
        // The conditions and the range are checked against the same manifest read that
        // serves the bytes, so they hold for the bytes sent.
        let (meta, read, bytes) = self
            .objects
            .get_object_with(tenant, &input.bucket, key, |meta| {
                conditions.check(meta)?;
                let size = meta.size_bytes;
                match &input.range {
                    None => Ok((0, size)),
                    Some(range) => range
                        .check(size)
                        .map(|checked| (checked.start, checked.end))
                        .map_err(|_| ObjectError::InvalidRange { size_bytes: size }),
                }
            })
            .await
            .map_err(object_error)?;
        let content_range = input.range.as_ref().map(|_| {
            format!("bytes {}-{}/{}", read.start, read.end.saturating_sub(1), meta.size_bytes)
        });
        let length = bytes.len() as i64;
        let mut output = GetObjectOutput {
            body: Some(StreamingBlob::from(s3s::Body::from(bytes))),
            content_length: Some(length),
            content_range,
            accept_ranges: Some("bytes".to_owned()),
            ..Default::default()
        };
        fill_head(&meta, &mut output.e_tag, &mut output.last_modified, &mut output.metadata);
        output.content_type = meta.user.content_type.clone();
        // A range's bytes are not what the object's checksums cover: S3 sends none then.
        if checksums_asked(input.checksum_mode.as_ref()) && input.range.is_none() {
            set_checksums!(output, meta.checksums, checksum_type);
        }
        Ok(S3Response::new(output))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let tenant = self.tenant(&req).await?;
        let input = &req.input;
        let meta = self
            .objects
            .head_object(tenant, &input.bucket, input.key.as_bytes())
            .await
            .map_err(object_error)?;
        let conditions = ReadConditions {
            if_match: input.if_match.as_ref(),
            if_none_match: input.if_none_match.as_ref(),
            if_modified_since: input.if_modified_since.as_ref(),
            if_unmodified_since: input.if_unmodified_since.as_ref(),
        };
        conditions.check(&meta).map_err(object_error)?;
        let mut output = HeadObjectOutput {
            content_length: Some(meta.size_bytes as i64),
            accept_ranges: Some("bytes".to_owned()),
            ..Default::default()
        };
        fill_head(&meta, &mut output.e_tag, &mut output.last_modified, &mut output.metadata);
        output.content_type = meta.user.content_type.clone();
        if checksums_asked(input.checksum_mode.as_ref()) {
            set_checksums!(output, meta.checksums, checksum_type);
        }
        Ok(S3Response::new(output))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let tenant = self.tenant(&req).await?;
        let input = &req.input;
        match self.objects.delete_object(tenant, &input.bucket, input.key.as_bytes()).await {
            // S3 answers 204 for a key that was not there.
            Ok(()) | Err(ObjectError::NoSuchKey) => {
                Ok(S3Response::new(DeleteObjectOutput::default()))
            }
            Err(error) => Err(object_error(error)),
        }
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let tenant = self.tenant(&req).await?;
        let input = req.input;
        let prefix = input.prefix.clone().unwrap_or_default();
        let delimiter = input.delimiter.clone().filter(|d| !d.is_empty());
        let max_keys = clamp_limit(input.max_keys, LIST_KEYS_MAX);
        let after: Option<Vec<u8>> =
            match &input.continuation_token {
                Some(token) => Some(URL_SAFE_NO_PAD.decode(token).map_err(|_| {
                    s3_error!(InvalidArgument, "the continuation token is not ours")
                })?),
                None => input.start_after.clone().map(String::into_bytes),
            };
        let listing = self
            .list_keys(tenant, &input.bucket, &prefix, delimiter.as_deref(), after, max_keys)
            .await?;
        let count = listing.objects.len() + listing.prefixes.len();
        let next_continuation_token = listing.next_after().map(|key| URL_SAFE_NO_PAD.encode(key));
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: Some(prefix),
            delimiter,
            max_keys: Some(max_keys as i32),
            key_count: Some(count as i32),
            is_truncated: Some(listing.truncated),
            continuation_token: input.continuation_token,
            next_continuation_token,
            start_after: input.start_after,
            contents: Some(listing.objects()?),
            common_prefixes: Some(listing.common_prefixes()),
            ..Default::default()
        }))
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let tenant = self.tenant(&req).await?;
        let input = req.input;
        let prefix = input.prefix.clone().unwrap_or_default();
        let delimiter = input.delimiter.clone().filter(|d| !d.is_empty());
        let max_keys = clamp_limit(input.max_keys, LIST_KEYS_MAX);
        let after = input.marker.clone().filter(|m| !m.is_empty()).map(String::into_bytes);
        let listing = self
            .list_keys(tenant, &input.bucket, &prefix, delimiter.as_deref(), after, max_keys)
            .await?;
        let next_marker = listing.next_after().map(utf8_key).transpose()?;
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(input.bucket),
            prefix: Some(prefix),
            delimiter,
            marker: Some(input.marker.unwrap_or_default()),
            max_keys: Some(max_keys as i32),
            is_truncated: Some(listing.truncated),
            next_marker,
            contents: Some(listing.objects()?),
            common_prefixes: Some(listing.common_prefixes()),
            ..Default::default()
        }))
    }

    /// Versioning is never enabled here: each object is its one version, "null", the latest.
    async fn list_object_versions(
        &self,
        req: S3Request<ListObjectVersionsInput>,
    ) -> S3Result<S3Response<ListObjectVersionsOutput>> {
        let tenant = self.tenant(&req).await?;
        let input = req.input;
        let prefix = input.prefix.clone().unwrap_or_default();
        let delimiter = input.delimiter.clone().filter(|d| !d.is_empty());
        let max_keys = clamp_limit(input.max_keys, LIST_KEYS_MAX);
        let after = input.key_marker.clone().filter(|m| !m.is_empty()).map(String::into_bytes);
        let listing = self
            .list_keys(tenant, &input.bucket, &prefix, delimiter.as_deref(), after, max_keys)
            .await?;
        let next_key_marker = listing.next_after().map(utf8_key).transpose()?;
        let next_version_id_marker = next_key_marker.as_ref().map(|_| NULL_VERSION.to_owned());
        let mut versions = Vec::with_capacity(listing.objects.len());
        for listed in &listing.objects {
            versions.push(ObjectVersion {
                key: Some(utf8_key(&listed.key)?),
                version_id: Some(NULL_VERSION.to_owned()),
                is_latest: Some(true),
                size: Some(listed.size_bytes as i64),
                e_tag: Some(etag_of_parts(listed.etag, listed.parts)),
                last_modified: Some(timestamp(listed.modified_unix_ms)),
                ..ObjectVersion::default()
            });
        }
        Ok(S3Response::new(ListObjectVersionsOutput {
            name: Some(input.bucket),
            prefix: Some(prefix),
            delimiter,
            key_marker: input.key_marker,
            version_id_marker: input.version_id_marker,
            max_keys: Some(max_keys as i32),
            is_truncated: Some(listing.truncated),
            next_key_marker,
            next_version_id_marker,
            versions: Some(versions),
            common_prefixes: Some(listing.common_prefixes()),
            ..Default::default()
        }))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        let tenant = self.tenant(&req).await?;
        self.own_bucket(tenant, &req.input.bucket).await?;
        // One region; S3 shows us-east-1 as an empty constraint.
        Ok(S3Response::new(GetBucketLocationOutput::default()))
    }

    async fn get_bucket_versioning(
        &self,
        req: S3Request<GetBucketVersioningInput>,
    ) -> S3Result<S3Response<GetBucketVersioningOutput>> {
        let tenant = self.tenant(&req).await?;
        self.own_bucket(tenant, &req.input.bucket).await?;
        // Versioning was never enabled: S3 answers with no status at all (rclone and other
        // sync tools ask before deleting).
        Ok(S3Response::new(GetBucketVersioningOutput::default()))
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let tenant = self.tenant(&req).await?;
        let input = req.input;
        let (source_bucket, source_key) = copy_source(&input.copy_source)?;
        let replace = match input.metadata_directive.as_ref().map(|d| d.as_str()) {
            None | Some("COPY") => None,
            Some("REPLACE") => Some(UserMetadata {
                content_type: input.content_type.map(|t| t.to_string()),
                entries: input.metadata.unwrap_or_default().into_iter().collect(),
            }),
            Some(_) => return Err(s3_error!(InvalidArgument, "unknown metadata directive")),
        };
        if source_bucket == input.bucket && source_key == input.key && replace.is_none() {
            return Err(s3_error!(
                InvalidRequest,
                "copying an object to itself without changing its metadata is not allowed"
            ));
        }
        let conditions = ReadConditions {
            if_match: input.copy_source_if_match.as_ref(),
            if_none_match: input.copy_source_if_none_match.as_ref(),
            if_modified_since: input.copy_source_if_modified_since.as_ref(),
            if_unmodified_since: input.copy_source_if_unmodified_since.as_ref(),
        };
        // Checked on the source read the copy is made from.
        let source_check = |meta: &ObjectMeta| conditions.check_copy_source(meta);
        let copied = self
            .objects
            .copy_object(
                tenant,
                (&source_bucket, source_key.as_bytes()),
                (&input.bucket, input.key.as_bytes()),
                replace.as_ref(),
                source_check,
            )
            .await
            .map_err(object_error)?;
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(etag_of_parts(copied.etag, copied.parts)),
                last_modified: Some(timestamp(copied.modified_unix_ms)),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let tenant = self.tenant(&req).await?;
        let input = req.input;
        let identifiers = input.delete.objects;
        if identifiers.is_empty() || identifiers.len() > LIST_KEYS_MAX {
            return Err(s3_error!(MalformedXML, "1 to 1000 keys in one DeleteObjects"));
        }
        // The bucket is checked once: another tenant's bucket fails the whole request.
        self.own_bucket(tenant, &input.bucket).await?;
        let quiet = input.delete.quiet.unwrap_or(false);
        let (mut deleted, mut errors) = (Vec::new(), Vec::new());
        for identifier in identifiers {
            let key = identifier.key;
            let outcome = match identifier.version_id.as_deref() {
                Some(version) if version != NULL_VERSION => Err(s3_error!(NoSuchVersion)),
                _ => {
                    match self.objects.delete_object(tenant, &input.bucket, key.as_bytes()).await {
                        Ok(()) | Err(ObjectError::NoSuchKey) => Ok(()),
                        Err(error) => Err(object_error(error)),
                    }
                }
            };
            match outcome {
                Ok(()) if quiet => {}
                Ok(()) => deleted.push(DeletedObject {
                    key: Some(key),
                    version_id: identifier.version_id,
                    ..Default::default()
                }),
                Err(error) => errors.push(S3DeleteError {
                    code: Some(error.code().as_str().to_owned()),
                    message: error.message().map(str::to_owned),
                    key: Some(key),
                    version_id: identifier.version_id,
                }),
            }
        }
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: Some(errors),
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let tenant = self.tenant(&req).await?;
        let input = req.input;
        let user = UserMetadata {
            content_type: input.content_type.map(|t| t.to_string()),
            entries: input.metadata.unwrap_or_default().into_iter().collect(),
        };
        let upload_id = self
            .objects
            .create_upload(tenant, &input.bucket, input.key.as_bytes(), &user)
            .await
            .map_err(object_error)?;
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(upload_id),
            ..Default::default()
        }))
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let tenant = self.tenant(&req).await?;
        let mut input = req.input;
        let claims = claims_of!(input, req.headers);
        let (body, checksums) = read_checked(
            input.body.take(),
            S3_PART_MAX_BYTES,
            &claims,
            req.trailing_headers.as_ref(),
        )
        .await?;
        let etag = self
            .objects
            .upload_part(
                tenant,
                &input.bucket,
                input.key.as_bytes(),
                &input.upload_id,
                input.part_number,
                body,
            )
            .await
            .map_err(object_error)?;
        let mut output = UploadPartOutput { e_tag: Some(etag_of(etag)), ..Default::default() };
        set_checksums!(output, checksums);
        Ok(S3Response::new(output))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let tenant = self.tenant(&req).await?;
        let input = req.input;
        let listed = input.multipart_upload.and_then(|upload| upload.parts).unwrap_or_default();
        if listed.is_empty() {
            return Err(s3_error!(MalformedXML, "a completion lists at least one part"));
        }
        let mut parts = Vec::with_capacity(listed.len().min(usize::from(S3_PARTS_MAX)));
        for part in listed {
            let (Some(number), Some(etag)) = (part.part_number, part.e_tag) else {
                return Err(s3_error!(InvalidPart, "each part needs its number and ETag"));
            };
            parts.push((number, etag.value().to_owned()));
        }
        let completed = self
            .objects
            .complete_upload(tenant, &input.bucket, input.key.as_bytes(), &input.upload_id, &parts)
            .await
            .map_err(object_error)?;
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            location: Some(format!("/{}/{}", input.bucket, input.key)),
            bucket: Some(input.bucket),
            key: Some(input.key),
            e_tag: Some(etag_of_parts(completed.etag, Some(completed.parts))),
            ..Default::default()
        }))
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        let tenant = self.tenant(&req).await?;
        let input = req.input;
        let (source_bucket, source_key) = copy_source(&input.copy_source)?;
        let range =
            match &input.copy_source_range {
                None => None,
                Some(text) => Some(Range::parse(text).map_err(|_| {
                    s3_error!(InvalidArgument, "copy source range: bytes=first-last")
                })?),
            };
        let conditions = ReadConditions {
            if_match: input.copy_source_if_match.as_ref(),
            if_none_match: input.copy_source_if_none_match.as_ref(),
            if_modified_since: input.copy_source_if_modified_since.as_ref(),
            if_unmodified_since: input.copy_source_if_unmodified_since.as_ref(),
        };
        // The conditions and the range are checked on the source read that gives the bytes.
        let pick = |meta: &ObjectMeta| {
            conditions.check_copy_source(meta)?;
            let size = meta.size_bytes;
            match &range {
                None => Ok((0, size)),
                Some(range) => range
                    .check(size)
                    .map(|checked| (checked.start, checked.end))
                    .map_err(|_| ObjectError::InvalidRange { size_bytes: size }),
            }
        };
        let etag = self
            .objects
            .upload_part_copy(
                tenant,
                (&input.bucket, input.key.as_bytes(), &input.upload_id),
                input.part_number,
                (&source_bucket, source_key.as_bytes()),
                pick,
            )
            .await
            .map_err(object_error)?;
        Ok(S3Response::new(UploadPartCopyOutput {
            copy_part_result: Some(CopyPartResult {
                e_tag: Some(etag_of(etag)),
                last_modified: Some(Timestamp::from(std::time::SystemTime::now())),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let tenant = self.tenant(&req).await?;
        let input = &req.input;
        self.objects
            .abort_upload(tenant, &input.bucket, input.key.as_bytes(), &input.upload_id)
            .await
            .map_err(object_error)?;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        let tenant = self.tenant(&req).await?;
        let input = req.input;
        let limit = clamp_limit(input.max_parts, S3_LIST_PARTS_MAX);
        let after = input.part_number_marker.map_or(0, |m| u16::try_from(m).unwrap_or(u16::MAX));
        let (parts, truncated) = self
            .objects
            .list_parts(tenant, &input.bucket, input.key.as_bytes(), &input.upload_id, after, limit)
            .await
            .map_err(object_error)?;
        let next = parts.last().map(|part| i32::from(part.number));
        let parts = parts
            .into_iter()
            .map(|part| Part {
                part_number: Some(i32::from(part.number)),
                size: Some(part.size_bytes as i64),
                e_tag: Some(etag_of(part.etag)),
                ..Part::default()
            })
            .collect();
        Ok(S3Response::new(ListPartsOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(input.upload_id),
            max_parts: Some(limit as i32),
            part_number_marker: input.part_number_marker,
            next_part_number_marker: if truncated { next } else { None },
            is_truncated: Some(truncated),
            parts: Some(parts),
            ..Default::default()
        }))
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let tenant = self.tenant(&req).await?;
        let input = req.input;
        if input.delimiter.as_ref().is_some_and(|d| !d.is_empty()) {
            return Err(s3_error!(NotImplemented, "ListMultipartUploads with a delimiter"));
        }
        let limit = clamp_limit(input.max_uploads, S3_LIST_UPLOADS_MAX);
        let prefix = input.prefix.clone().unwrap_or_default();
        let marker = input
            .key_marker
            .as_ref()
            .filter(|m| !m.is_empty())
            .map(|key| (key.as_bytes(), input.upload_id_marker.as_deref()));
        let (uploads, truncated) = self
            .objects
            .list_uploads(tenant, &input.bucket, prefix.as_bytes(), marker, limit)
            .await
            .map_err(object_error)?;
        let mut listed = Vec::with_capacity(uploads.len());
        for upload in &uploads {
            listed.push(MultipartUpload {
                key: Some(utf8_key(&upload.key)?),
                upload_id: Some(upload.upload_id.clone()),
                initiated: Some(timestamp(upload.initiated_unix_ms)),
                ..MultipartUpload::default()
            });
        }
        let (next_key_marker, next_upload_id_marker) = match uploads.last() {
            Some(last) if truncated => (Some(utf8_key(&last.key)?), Some(last.upload_id.clone())),
            _ => (None, None),
        };
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            prefix: Some(prefix),
            key_marker: input.key_marker,
            upload_id_marker: input.upload_id_marker,
            next_key_marker,
            next_upload_id_marker,
            max_uploads: Some(limit as i32),
            is_truncated: Some(truncated),
            uploads: Some(listed),
            ..Default::default()
        }))
    }
}

/// The conditional headers of a GET or HEAD (or a copy's source), evaluated as RFC 9110
/// orders them: If-Match, else If-Unmodified-Since (412 when they fail); then If-None-Match,
/// else If-Modified-Since (304 when the object is unchanged). Times compare in whole
/// seconds, the resolution of HTTP dates.
struct ReadConditions<'a> {
    if_match: Option<&'a ETagCondition>,
    if_none_match: Option<&'a ETagCondition>,
    if_modified_since: Option<&'a Timestamp>,
    if_unmodified_since: Option<&'a Timestamp>,
}

impl ReadConditions<'_> {
    fn check(&self, meta: &ObjectMeta) -> Result<(), ObjectError> {
        let etag = etag_of_parts(meta.etag, meta.parts);
        let modified_s = (meta.modified_unix_ms / 1000) as i64;
        let matches = |condition: &ETagCondition| match condition {
            ETagCondition::Any => true,
            ETagCondition::ETag(tag) => tag.value() == etag.value(),
        };
        match (self.if_match, self.if_unmodified_since) {
            (Some(condition), _) if !matches(condition) => {
                return Err(ObjectError::PreconditionFailed);
            }
            (None, Some(since)) if modified_s > unix_seconds(since) => {
                return Err(ObjectError::PreconditionFailed);
            }
            _ => {}
        }
        match (self.if_none_match, self.if_modified_since) {
            (Some(condition), _) if matches(condition) => Err(ObjectError::NotModified),
            (None, Some(since)) if modified_s <= unix_seconds(since) => {
                Err(ObjectError::NotModified)
            }
            _ => Ok(()),
        }
    }
}

impl ReadConditions<'_> {
    /// As [`Self::check`] for a copy's source: any failure is 412 (S3 answers no 304 to a
    /// copy).
    fn check_copy_source(&self, meta: &ObjectMeta) -> Result<(), ObjectError> {
        match self.check(meta) {
            Err(ObjectError::NotModified) => Err(ObjectError::PreconditionFailed),
            other => other,
        }
    }
}

/// The bucket and key a copy reads; only the null version exists.
fn copy_source(source: &CopySource) -> S3Result<(String, String)> {
    match source {
        CopySource::Bucket { bucket, key, version_id } => {
            if version_id.as_deref().is_some_and(|v| v != NULL_VERSION) {
                return Err(s3_error!(NoSuchVersion, "versioning is off: only \"null\""));
            }
            Ok((bucket.to_string(), key.to_string()))
        }
        _ => Err(s3_error!(NotImplemented, "copies from access points")),
    }
}

fn unix_seconds(timestamp: &Timestamp) -> i64 {
    time::OffsetDateTime::from(timestamp.clone()).unix_timestamp()
}

/// The condition of a conditional PUT: `If-None-Match: *` (the key must be free) or
/// `If-Match` (the object must exist, with that ETag unless `*`). Checked where the put is
/// applied in the metadata, atomically with the write.
fn put_condition(
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
) -> S3Result<Option<PutCondition>> {
    match (if_match, if_none_match) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) => {
            Err(s3_error!(NotImplemented, "If-Match and If-None-Match together on a PUT"))
        }
        (None, Some(ETagCondition::Any)) => Ok(Some(PutCondition::Absent)),
        (None, Some(ETagCondition::ETag(_))) => {
            Err(s3_error!(NotImplemented, "If-None-Match on a PUT takes only *"))
        }
        (Some(ETagCondition::Any), None) => Ok(Some(PutCondition::Present)),
        (Some(ETagCondition::ETag(tag)), None) => {
            // A multipart ETag's `-N` is not kept apart from its digest; the digest decides.
            let digest = tag.value().split_once('-').map_or(tag.value(), |(digest, _)| digest);
            match crate::multipart::parse_etag(digest) {
                Some(etag) => Ok(Some(PutCondition::ETagIs(MetaETag(etag)))),
                // Not an ETag we could have given: no object has it.
                None => Err(s3_error!(PreconditionFailed)),
            }
        }
    }
}

/// One page of a bucket listing; see [`KisekiS3::list_keys`].
#[derive(Debug, Default)]
struct Listing {
    objects: Vec<crate::objects::Listed>,
    prefixes: Vec<String>,
    truncated: bool,
    /// The last key the page consumed (objects and keys rolled into prefixes).
    after: Option<Vec<u8>>,
}

impl Listing {
    /// Where the next page starts (after this key), when the listing was truncated.
    fn next_after(&self) -> Option<&[u8]> {
        if self.truncated { self.after.as_deref() } else { None }
    }

    fn objects(&self) -> S3Result<Vec<Object>> {
        let mut objects = Vec::with_capacity(self.objects.len());
        for listed in &self.objects {
            objects.push(Object {
                key: Some(utf8_key(&listed.key)?),
                size: Some(listed.size_bytes as i64),
                e_tag: Some(etag_of_parts(listed.etag, listed.parts)),
                last_modified: Some(timestamp(listed.modified_unix_ms)),
                ..Object::default()
            });
        }
        Ok(objects)
    }

    fn common_prefixes(&self) -> Vec<CommonPrefix> {
        self.prefixes.iter().map(|p| CommonPrefix { prefix: Some(p.clone()) }).collect()
    }
}

/// The version id of every object while versioning is off (S3's "null" version).
const NULL_VERSION: &str = "null";

/// A listing's page size: what the client asked for, at most `max` (S3's limits).
fn clamp_limit(asked: Option<i32>, max: usize) -> usize {
    asked.map_or(max, |m| usize::try_from(m).unwrap_or(0).min(max))
}

fn utf8_key(key: &[u8]) -> S3Result<String> {
    String::from_utf8(key.to_vec())
        .map_err(|_| s3_error!(InternalError, "a stored key is not UTF-8"))
}

/// Sets an output's `checksum_*` fields (and its checksum type, for outputs that have one:
/// our checksums are always of the full object) from stored or computed checksums.
macro_rules! set_checksums {
    ($output:expr, $checksums:expr) => {{
        let checksums: ObjectChecksums = $checksums.clone();
        $output.checksum_crc32 = checksums.crc32;
        $output.checksum_crc32c = checksums.crc32c;
        $output.checksum_crc64nvme = checksums.crc64nvme;
        $output.checksum_sha1 = checksums.sha1;
        $output.checksum_sha256 = checksums.sha256;
    }};
    ($output:expr, $checksums:expr, checksum_type) => {{
        if !$checksums.is_empty() {
            $output.checksum_type = Some(ChecksumType::from_static(ChecksumType::FULL_OBJECT));
        }
        set_checksums!($output, $checksums);
    }};
}
use set_checksums;

/// What a PutObject or UploadPart input (the same fields in both) says its body is.
macro_rules! claims_of {
    ($input:expr, $headers:expr) => {
        Claims {
            content_md5: $input.content_md5.as_deref(),
            algorithm: $input.checksum_algorithm.as_ref(),
            trailer: header_text(&$headers, "x-amz-trailer"),
            crc32: $input.checksum_crc32.as_deref(),
            crc32c: $input.checksum_crc32c.as_deref(),
            crc64nvme: $input.checksum_crc64nvme.as_deref(),
            sha1: $input.checksum_sha1.as_deref(),
            sha256: $input.checksum_sha256.as_deref(),
        }
    };
}
use claims_of;

/// Whether a GET or HEAD asked for the object's checksums (`x-amz-checksum-mode: ENABLED`).
fn checksums_asked(mode: Option<&ChecksumMode>) -> bool {
    mode.is_some_and(|mode| mode.as_str().eq_ignore_ascii_case(ChecksumMode::ENABLED))
}

/// A request header as text, if it is present and printable.
fn header_text<'a>(headers: &'a hyper::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

fn fill_head(
    meta: &ObjectMeta,
    etag: &mut Option<S3ETag>,
    last_modified: &mut Option<Timestamp>,
    metadata: &mut Option<s3s::dto::Metadata>,
) {
    *etag = Some(etag_of_parts(meta.etag, meta.parts));
    *last_modified = Some(timestamp(meta.modified_unix_ms));
    if !meta.user.entries.is_empty() {
        *metadata = Some(meta.user.entries.clone().into_iter().collect());
    }
}

fn etag_of(md5: [u8; 16]) -> S3ETag {
    etag_of_parts(md5, None)
}

/// S3's ETag: the MD5 in hex, followed by `-<parts>` for a multipart object.
fn etag_of_parts(md5: [u8; 16], parts: Option<u16>) -> S3ETag {
    match parts {
        None => S3ETag::Strong(hex(&md5)),
        Some(parts) => S3ETag::Strong(format!("{}-{parts}", hex(&md5))),
    }
}

fn timestamp(unix_ms: u64) -> Timestamp {
    Timestamp::from(UNIX_EPOCH + Duration::from_millis(unix_ms))
}

/// The S3 error for an object-layer error. Internal details go to the log, not the client.
fn object_error(error: ObjectError) -> S3Error {
    match error {
        ObjectError::NoSuchTenant => s3_error!(AccessDenied),
        ObjectError::NoSuchBucket => s3_error!(NoSuchBucket),
        ObjectError::AccessDenied => s3_error!(AccessDenied),
        ObjectError::NoSuchKey => s3_error!(NoSuchKey),
        ObjectError::BucketExists => s3_error!(BucketAlreadyExists),
        ObjectError::BucketNotEmpty => s3_error!(BucketNotEmpty),
        ObjectError::InvalidBucketName(why) => {
            S3Error::with_message(S3ErrorCode::InvalidBucketName, why)
        }
        ObjectError::InvalidKey(why) => S3Error::with_message(S3ErrorCode::InvalidArgument, why),
        ObjectError::InvalidRange { .. } => s3_error!(InvalidRange),
        ObjectError::NoSuchUpload => s3_error!(NoSuchUpload),
        ObjectError::InvalidPartNumber => {
            s3_error!(InvalidArgument, "Part number must be an integer between 1 and 10000")
        }
        ObjectError::InvalidPart => s3_error!(InvalidPart),
        ObjectError::InvalidPartOrder => s3_error!(InvalidPartOrder),
        ObjectError::EntityTooSmall => s3_error!(EntityTooSmall),
        ObjectError::EntityTooLarge => s3_error!(EntityTooLarge),
        ObjectError::PreconditionFailed => s3_error!(PreconditionFailed),
        ObjectError::NotModified => s3_error!(NotModified),
        ObjectError::TooManyUploads => {
            s3_error!(SlowDown, "too many open multipart uploads; abort some")
        }
        ObjectError::TenantKeysDestroyed => {
            S3Error::with_message(S3ErrorCode::AccessDenied, "tenant keys destroyed")
        }
        ObjectError::Unavailable(why) => {
            tracing::warn!(%why, "S3 request refused: unavailable");
            s3_error!(SlowDown)
        }
        ObjectError::QuorumNotReached { acked, required } => {
            tracing::warn!(acked, required, "S3 write refused: too few replicas acknowledged");
            s3_error!(ServiceUnavailable, "too few storage nodes are available; retry later")
        }
        ObjectError::Integrity(why) => {
            tracing::error!(%why, "S3 request failed an integrity check");
            s3_error!(InternalError)
        }
        ObjectError::Internal(why) => {
            tracing::error!(%why, "S3 request failed");
            s3_error!(InternalError)
        }
    }
}

/// How long a client may take to finish its TLS handshake or send a request's headers.
const S3_HEADER_TIMEOUT: Duration = Duration::from_secs(S3_HEADER_TIMEOUT_SECS);

/// The S3 front end's listener; see [`S3Server::start`].
#[derive(Debug)]
pub struct S3Server {
    local_addr: std::net::SocketAddr,
    shutdown: tokio::sync::watch::Sender<bool>,
    accept_loop: tokio::task::JoinHandle<()>,
}

impl S3Server {
    /// Serves `service` on `listener` over TLS 1.3 (`tls`'s certificate, no client
    /// certificate) on the current tokio runtime, until [`Self::shutdown`]. Fails if the
    /// TLS configuration cannot be made or the listener has no address.
    pub fn start(
        listener: tokio::net::TcpListener,
        tls: &kiseki_security::TlsContext,
        service: s3s::service::S3Service,
    ) -> std::io::Result<S3Server> {
        S3Server::start_with_limits(listener, tls, service, S3Limits::default())
    }

    /// As [`Self::start`], with the request bounds of `limits` (tests take small ones).
    pub fn start_with_limits(
        listener: tokio::net::TcpListener,
        tls: &kiseki_security::TlsContext,
        service: s3s::service::S3Service,
        limits: S3Limits,
    ) -> std::io::Result<S3Server> {
        S3Server::serve(listener, tls, Bounded::new(service, limits))
    }

    /// As [`Self::start`], counting every answer in `metrics` (by operation and status;
    /// the operation is named by an access hook that fills `crate::s3_front::OpSlot`, as
    /// `crate::audit::AuditAccess` does).
    pub fn start_metered(
        listener: tokio::net::TcpListener,
        tls: &kiseki_security::TlsContext,
        service: s3s::service::S3Service,
        metrics: Arc<crate::observe::Metrics>,
    ) -> std::io::Result<S3Server> {
        S3Server::serve(listener, tls, Bounded::new(service, S3Limits::default()).metered(metrics))
    }

    fn serve(
        listener: tokio::net::TcpListener,
        tls: &kiseki_security::TlsContext,
        service: Bounded<s3s::service::S3Service>,
    ) -> std::io::Result<S3Server> {
        let config = tls.https_server_config().map_err(std::io::Error::other)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let local_addr = listener.local_addr()?;
        let (shutdown, watch) = tokio::sync::watch::channel(false);
        let accept_loop = tokio::spawn(accept_loop(listener, acceptor, service, watch));
        Ok(S3Server { local_addr, shutdown, accept_loop })
    }

    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.local_addr
    }

    /// Stops accepting; connections in progress end with their runtime.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.accept_loop.await;
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    service: Bounded<s3s::service::S3Service>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(S3_CONNECTIONS_MAX));
    loop {
        let permit = tokio::select! {
            _ = shutdown.changed() => return,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let (stream, _) = tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "S3: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Small responses go out at once instead of waiting for an ACK (Nagle).
        let _ = stream.set_nodelay(true);
        let (acceptor, service) = (acceptor.clone(), service.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let handshake = tokio::time::timeout(S3_HEADER_TIMEOUT, acceptor.accept(stream));
            let tls = match handshake.await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    tracing::debug!(%error, "S3: TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(S3_HEADER_TIMEOUT)
                // A hard bound on the request line and headers (431 beyond); the read
                // buffer's own bound alone lets a head that arrives in one read through.
                .max_header_size(S3_HEADER_BYTES_MAX)
                .max_buf_size(S3_HEADER_BYTES_MAX)
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service);
            if let Err(error) = connection.await {
                tracing::debug!(%error, "S3: connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missed_write_quorum_is_a_503_that_names_nothing_stored() {
        let error = object_error(ObjectError::QuorumNotReached { acked: 1, required: 2 });
        assert_eq!(error.code(), &S3ErrorCode::ServiceUnavailable);
        assert_eq!(error.code().status_code().map(|status| status.as_u16()), Some(503));
        let message = error.message().unwrap_or_default();
        assert!(message.contains("retry later") && !message.contains('1'), "{message}");
    }
}
