//! Multipart uploads over the object layer: an upload is a record in the metadata, each
//! part is cut, sealed and stored like a PUT body ([`ObjectStore::store_chunks`]) and named
//! by a `PutPart` command, and completion joins the named parts' chunk lists into the
//! object's manifest in one command, so the object appears whole or not at all.
//!
//! Chunk references: a part's chunks are referenced once by its part row; completion moves
//! the named parts' references into the manifest and the state machine hands back
//! (`Applied::Released`) the chunks of parts left out, of a part replaced by a second
//! upload of its number, of an aborted upload and of the object a completion replaced;
//! this module releases exactly those, once.
//!
//! The ETag of a completed object is S3's: the MD5 of the parts' binary MD5s, followed by
//! `-<part count>` (the count is sealed with the object's metadata at completion).
//!
//! UploadPartCopy reads the source range and stores it as a part like an uploaded body
//! (a part's chunks are cut from its own bytes, so source chunks are not shared).
//!
//! Upload ids are 16 random bytes shown as 32 hex digits; an id is looked up under the
//! caller's tenant only, so another tenant's upload is NoSuchUpload (and its bucket
//! AccessDenied before that).

use hyper::body::Bytes;
use kiseki_consensus::command::{Command, ETag, Part, Sealed, UploadId};
use kiseki_consensus::{Applied, ConsensusError, PART_ETAG_DIFFERS, Rejection, StateView};
use kiseki_consensus::{TOO_MANY_UPLOADS, UploadRecord};
use kiseki_security::TenantId;
use kiseki_security::keymanager::KeyStoreBackend;

use crate::constants::{S3_PART_MAX_BYTES, S3_PART_MIN_BYTES, S3_PARTS_MAX};
use crate::objects::{
    ObjectChecksums, ObjectError, ObjectMeta, ObjectStore, SealedMeta, UserMetadata, absent_bucket,
    check_key, consensus_error, context, meta_tenant, now_unix_ms,
};

/// An open upload as ListMultipartUploads shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadInfo {
    pub upload_id: String,
    pub key: Vec<u8>,
    pub initiated_unix_ms: u64,
}

/// An uploaded part as ListParts shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartInfo {
    pub number: u16,
    pub size_bytes: u64,
    pub etag: [u8; 16],
}

/// A completed upload: the object's ETag (MD5 of the part MD5s) and its part count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completed {
    pub etag: [u8; 16],
    pub parts: u16,
}

impl<S: KeyStoreBackend + Send + 'static> ObjectStore<S> {
    /// Opens an upload of `key`; returns its id. The metadata and the initiation time are
    /// sealed now (S3's Last-Modified of a multipart object is its initiation).
    pub async fn create_upload(
        &self,
        tenant: TenantId,
        bucket: &str,
        key: &[u8],
        user: &UserMetadata,
    ) -> Result<String, ObjectError> {
        check_key(key)?;
        let mut id = [0u8; 16];
        aws_lc_rs::rand::fill(&mut id)
            .map_err(|_| ObjectError::Internal("the system RNG failed".to_owned()))?;
        let sealed = SealedMeta {
            user: user.clone(),
            modified_unix_ms: now_unix_ms(),
            parts: None,
            checksums: ObjectChecksums::default(),
        };
        let json = serde_json::to_vec(&sealed).map_err(|e| ObjectError::Internal(e.to_string()))?;
        let sealed_user_metadata =
            Sealed(self.seal_for_tenant(tenant, &context(b"meta", bucket, key), &json)?);
        let command = Command::CreateUpload {
            tenant: meta_tenant(tenant),
            bucket: bucket.to_owned(),
            key: key.to_vec(),
            upload: UploadId(id),
            sealed_user_metadata,
        };
        match self.meta.propose(command).await {
            Ok(_) => Ok(crate::hex::encode(&id)),
            Err(ConsensusError::Rejected(Rejection::NotFound(_))) => {
                Err(self.absent_bucket(bucket).await)
            }
            Err(ConsensusError::Rejected(Rejection::Conflict(why))) if why == TOO_MANY_UPLOADS => {
                Err(ObjectError::TooManyUploads)
            }
            Err(error) => Err(consensus_error(error)),
        }
    }

    /// Stores `body` as part `number` of the upload, replacing an earlier upload of that
    /// number (whose chunks are released); returns the part's ETag (MD5).
    pub async fn upload_part(
        &self,
        tenant: TenantId,
        bucket: &str,
        key: &[u8],
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> Result<[u8; 16], ObjectError> {
        let number = part_number(number).ok_or(ObjectError::InvalidPartNumber)?;
        let upload = {
            let view = self.meta.read().await.map_err(consensus_error)?;
            self.upload(&view, tenant, bucket, key, upload_id)?.0
        };
        self.put_part(tenant, upload, number, body).await
    }

    /// UploadPartCopy: part `number` of the upload made of the bytes `range` picks from
    /// the caller's object `source` (bucket, key); `range` sees the source's metadata from
    /// the read that serves the bytes (for the copy-source conditions, and for the limit
    /// on a part's size). The bytes are read and stored again as a new part's chunks.
    pub async fn upload_part_copy(
        &self,
        tenant: TenantId,
        target: (&str, &[u8], &str),
        number: i32,
        source: (&str, &[u8]),
        range: impl FnOnce(&ObjectMeta) -> Result<(u64, u64), ObjectError>,
    ) -> Result<[u8; 16], ObjectError> {
        let (bucket, key, upload_id) = target;
        let number = part_number(number).ok_or(ObjectError::InvalidPartNumber)?;
        let upload = {
            let view = self.meta.read().await.map_err(consensus_error)?;
            self.upload(&view, tenant, bucket, key, upload_id)?.0
        };
        let bounded = |meta: &ObjectMeta| {
            let (start, end) = range(meta)?;
            if end - start > S3_PART_MAX_BYTES as u64 {
                return Err(ObjectError::EntityTooLarge);
            }
            Ok((start, end))
        };
        let (_, _, body) = self.get_object_with(tenant, source.0, source.1, bounded).await?;
        self.put_part(tenant, upload, number, Bytes::from(body)).await
    }

    /// Stores `body` as part `number` of `upload` and names it there, releasing the part
    /// it replaces; returns its ETag (MD5).
    async fn put_part(
        &self,
        tenant: TenantId,
        upload: UploadId,
        number: u16,
        body: Bytes,
    ) -> Result<[u8; 16], ObjectError> {
        let etag = self.md5.digest(body.clone()).await;
        let chunks = self.store_chunks(tenant, &body).await?;
        let part = Part { chunks: chunks.clone(), size_bytes: body.len() as u64, etag: ETag(etag) };
        let command = Command::PutPart { tenant: meta_tenant(tenant), upload, number, part };
        match self.meta.propose(command).await {
            Ok(Applied::Released(old)) => {
                self.release_refs(&old).await;
                Ok(etag)
            }
            Ok(_) => Ok(etag),
            Err(error) => {
                // Nothing names the chunks this part stored: give their references back.
                self.release_refs(&chunks).await;
                Err(match error {
                    // Aborted or completed while the part was being stored.
                    ConsensusError::Rejected(Rejection::NotFound(_)) => ObjectError::NoSuchUpload,
                    // The upload's parts would name more chunks than one object may.
                    ConsensusError::Rejected(Rejection::TooLarge { .. }) => {
                        ObjectError::EntityTooLarge
                    }
                    other => consensus_error(other),
                })
            }
        }
    }

    /// Joins `parts` (number and ETag as the client quotes them, in ascending order) into
    /// the object, replacing what was at its key.
    pub async fn complete_upload(
        &self,
        tenant: TenantId,
        bucket: &str,
        key: &[u8],
        upload_id: &str,
        parts: &[(i32, String)],
    ) -> Result<Completed, ObjectError> {
        if parts.is_empty() || parts.len() > usize::from(S3_PARTS_MAX) {
            return Err(ObjectError::InvalidPart);
        }
        let mut named = Vec::with_capacity(parts.len());
        for (number, etag) in parts {
            let number = part_number(*number).ok_or(ObjectError::InvalidPart)?;
            let etag = parse_etag(etag).ok_or(ObjectError::InvalidPart)?;
            named.push((number, ETag(etag)));
        }
        if !named.windows(2).all(|pair| pair[0].0 < pair[1].0) {
            return Err(ObjectError::InvalidPartOrder);
        }
        let (upload, record) = {
            let view = self.meta.read().await.map_err(consensus_error)?;
            let (upload, record) = self.upload(&view, tenant, bucket, key, upload_id)?;
            // Sizes are checked here; the ETags are checked again where the completion is
            // applied, so a part replaced since this read fails the completion (InvalidPart)
            // rather than slipping past this size check.
            let owner = meta_tenant(tenant);
            for (index, (number, etag)) in named.iter().enumerate() {
                let part = view
                    .part(&owner, &upload, *number)
                    .map_err(consensus_error)?
                    .filter(|part| part.etag == *etag)
                    .ok_or(ObjectError::InvalidPart)?;
                if index + 1 < named.len() && part.size_bytes < S3_PART_MIN_BYTES {
                    return Err(ObjectError::EntityTooSmall);
                }
            }
            (upload, record)
        };
        let md5s: Vec<u8> = named.iter().flat_map(|(_, etag)| etag.0).collect();
        let etag = md5_many::md5(&md5s);
        let count = named.len() as u16;
        // The upload's metadata, sealed again with the part count its ETag shows.
        let meta_context = context(b"meta", bucket, key);
        let json = self.open_for_tenant(tenant, &meta_context, &record.sealed_user_metadata.0)?;
        let mut sealed: SealedMeta = serde_json::from_slice(&json)
            .map_err(|_| ObjectError::Integrity("upload metadata does not parse".to_owned()))?;
        sealed.parts = Some(count);
        let json = serde_json::to_vec(&sealed).map_err(|e| ObjectError::Internal(e.to_string()))?;
        let sealed_user_metadata = Sealed(self.seal_for_tenant(tenant, &meta_context, &json)?);
        let command = Command::CompleteUploadAs {
            tenant: meta_tenant(tenant),
            upload,
            parts: named,
            etag: ETag(etag),
            sealed_user_metadata,
        };
        match self.meta.propose(command).await {
            Ok(Applied::Released(chunks)) => {
                self.release_refs(&chunks).await;
                Ok(Completed { etag, parts: count })
            }
            Ok(_) => Ok(Completed { etag, parts: count }),
            Err(ConsensusError::Rejected(rejection)) => Err(match rejection {
                Rejection::NotFound(what) if what == "upload" => ObjectError::NoSuchUpload,
                Rejection::NotFound(_) => ObjectError::InvalidPart,
                Rejection::Conflict(why) if why == PART_ETAG_DIFFERS => ObjectError::InvalidPart,
                Rejection::TooLarge { .. } => ObjectError::EntityTooLarge,
                other => consensus_error(ConsensusError::Rejected(other)),
            }),
            Err(error) => Err(consensus_error(error)),
        }
    }

    /// Drops the upload and releases its parts' chunks.
    pub async fn abort_upload(
        &self,
        tenant: TenantId,
        bucket: &str,
        key: &[u8],
        upload_id: &str,
    ) -> Result<(), ObjectError> {
        let upload = {
            let view = self.meta.read().await.map_err(consensus_error)?;
            self.upload(&view, tenant, bucket, key, upload_id)?.0
        };
        let command = Command::AbortUpload { tenant: meta_tenant(tenant), upload };
        match self.meta.propose(command).await {
            Ok(Applied::Released(chunks)) => {
                self.release_refs(&chunks).await;
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(ConsensusError::Rejected(Rejection::NotFound(_))) => Err(ObjectError::NoSuchUpload),
            Err(error) => Err(consensus_error(error)),
        }
    }

    /// Up to `limit` parts numbered above `after`, and whether more follow.
    pub async fn list_parts(
        &self,
        tenant: TenantId,
        bucket: &str,
        key: &[u8],
        upload_id: &str,
        after: u16,
        limit: usize,
    ) -> Result<(Vec<PartInfo>, bool), ObjectError> {
        let view = self.meta.read().await.map_err(consensus_error)?;
        let (upload, _) = self.upload(&view, tenant, bucket, key, upload_id)?;
        let mut parts = view
            .parts(&meta_tenant(tenant), &upload, after, limit.saturating_add(1))
            .map_err(consensus_error)?;
        let truncated = parts.len() > limit;
        parts.truncate(limit);
        let parts = parts
            .into_iter()
            .map(|(number, part)| PartInfo {
                number,
                size_bytes: part.size_bytes,
                etag: part.etag.0,
            })
            .collect();
        Ok((parts, truncated))
    }

    /// The bucket's open uploads whose keys start with `prefix`, in key order (then
    /// initiation, then id), after the marker (`key_marker` alone: keys after it; with
    /// `upload_id_marker`: that key's uploads after that id, then later keys); up to `limit`,
    /// and whether more follow.
    pub async fn list_uploads(
        &self,
        tenant: TenantId,
        bucket: &str,
        prefix: &[u8],
        marker: Option<(&[u8], Option<&str>)>,
        limit: usize,
    ) -> Result<(Vec<UploadInfo>, bool), ObjectError> {
        let view = self.meta.read().await.map_err(consensus_error)?;
        let owner = meta_tenant(tenant);
        if !view.bucket_exists(&owner, bucket).map_err(consensus_error)? {
            return Err(absent_bucket(&view, bucket));
        }
        let mut uploads = Vec::new();
        for (id, record) in view.uploads(&owner).map_err(consensus_error)? {
            if record.bucket != bucket || !record.key.starts_with(prefix) {
                continue;
            }
            let json = self.open_for_tenant(
                tenant,
                &context(b"meta", bucket, &record.key),
                &record.sealed_user_metadata.0,
            )?;
            let sealed: SealedMeta = serde_json::from_slice(&json)
                .map_err(|_| ObjectError::Integrity("upload metadata does not parse".to_owned()))?;
            uploads.push(UploadInfo {
                upload_id: crate::hex::encode(&id.0),
                key: record.key,
                initiated_unix_ms: sealed.modified_unix_ms,
            });
        }
        uploads.sort_by(|a, b| {
            (&a.key, a.initiated_unix_ms, &a.upload_id).cmp(&(
                &b.key,
                b.initiated_unix_ms,
                &b.upload_id,
            ))
        });
        let start = match marker {
            None => 0,
            Some((key, id)) => {
                let after_key = uploads.partition_point(|u| u.key.as_slice() <= key);
                match id {
                    Some(id) => uploads
                        .iter()
                        .position(|u| u.key == key && u.upload_id == id)
                        .map_or(after_key, |at| at + 1),
                    None => after_key,
                }
            }
        };
        let mut page: Vec<UploadInfo> = uploads.drain(start..).collect();
        let truncated = page.len() > limit;
        page.truncate(limit);
        Ok((page, truncated))
    }

    /// The caller's upload `upload_id` of `key` in `bucket`: the bucket's absence says
    /// NoSuchBucket or AccessDenied; an unknown id, or one of another key, NoSuchUpload.
    fn upload(
        &self,
        view: &StateView,
        tenant: TenantId,
        bucket: &str,
        key: &[u8],
        upload_id: &str,
    ) -> Result<(UploadId, UploadRecord), ObjectError> {
        let owner = meta_tenant(tenant);
        if !view.bucket_exists(&owner, bucket).map_err(consensus_error)? {
            return Err(absent_bucket(view, bucket));
        }
        let upload = parse_upload_id(upload_id).ok_or(ObjectError::NoSuchUpload)?;
        match view.upload(&owner, &upload).map_err(consensus_error)? {
            Some(record) if record.bucket == bucket && record.key == key => Ok((upload, record)),
            _ => Err(ObjectError::NoSuchUpload),
        }
    }
}

/// A part number S3 allows (1 to 10,000).
fn part_number(number: i32) -> Option<u16> {
    u16::try_from(number).ok().filter(|n| (1..=S3_PARTS_MAX).contains(n))
}

/// An ETag as a client quotes it back: 32 hex digits, with or without the quotes.
pub fn parse_etag(etag: &str) -> Option<[u8; 16]> {
    let etag = etag.trim().trim_matches('"');
    crate::hex::decode(etag)
}

fn parse_upload_id(id: &str) -> Option<UploadId> {
    crate::hex::decode(id).map(UploadId)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_and_upload_ids_parse_back() {
        let bytes = [0xab; 16];
        assert_eq!(parse_etag(&format!("\"{}\"", crate::hex::encode(&bytes))), Some(bytes));
        assert_eq!(parse_etag(&crate::hex::encode(&bytes)), Some(bytes));
        assert_eq!(parse_etag("\"abc\""), None, "too short");
        assert_eq!(
            parse_etag(&format!("{}-2", crate::hex::encode(&bytes))),
            None,
            "a multipart ETag"
        );
        assert_eq!(parse_upload_id(&"g".repeat(32)), None, "not hex");
    }

    #[test]
    fn part_numbers_are_s3s() {
        assert_eq!(part_number(1), Some(1));
        assert_eq!(part_number(10_000), Some(10_000));
        for bad in [0, -1, 10_001, i32::MAX] {
            assert_eq!(part_number(bad), None, "{bad}");
        }
    }
}
