//! `kiseki.data.v1.DataService`: a tenant's buckets and objects over the object layer
//! ([`crate::objects`]), for HPC clients. The tenant is always the caller's certificate's
//! organization (the gate's target): no request field names one.

use std::pin::Pin;
use std::sync::Arc;

use kiseki_consensus::command::ObjectBody;
use kiseki_proto::data::data_service_server::DataService;
use kiseki_proto::data::{
    BucketRequest, ChunkRef, Empty, GetObjectHead, GetObjectReply, GetObjectRequest,
    ListBucketsReply, ListBucketsRequest, ListObjectsReply, ListObjectsRequest, ListedObject,
    Manifest, ObjectMeta, ObjectRequest, PutObjectHeader, PutObjectReply, PutObjectRequest,
    get_object_reply, put_object_request,
};
use kiseki_security::TenantId;
use kiseki_security::keymanager::{KeyStoreBackend, tenant_of_org};
use tokio::sync::OwnedSemaphorePermit;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::methods::{self, Allowed, DATA_ARGUMENT, Method};
use super::{Shared, object_status};
use crate::constants::{GRPC_BODY_PIECE_BYTES, GRPC_LIST_MAX, GRPC_OBJECT_MAX_BYTES};
use crate::objects::{ObjectChecksums, PutOptions, UserMetadata};

pub(crate) struct DataApi<S>(pub(crate) Arc<Shared<S>>);

type GetObjectStream = Pin<Box<dyn Stream<Item = Result<GetObjectReply, Status>> + Send>>;

impl<S: KeyStoreBackend + Send + 'static> DataApi<S> {
    /// Authorizes `method` for the caller's own tenant; returns that tenant.
    fn tenant<T>(&self, request: &Request<T>, method: &Method) -> Result<TenantId, Status> {
        let allowed: Allowed = self.0.gate.check(request, method, Some(DATA_ARGUMENT), None)?;
        Ok(tenant_of_org(allowed.org()?))
    }

    /// A permit to hold a body, or UNAVAILABLE while every one is taken.
    fn body_permit(&self) -> Result<OwnedSemaphorePermit, Status> {
        Arc::clone(&self.0.body_calls)
            .try_acquire_owned()
            .map_err(|_| Status::unavailable("busy: too many object bodies in flight; retry"))
    }
}

#[tonic::async_trait]
impl<S: KeyStoreBackend + Send + 'static> DataService for DataApi<S> {
    type GetObjectStream = GetObjectStream;

    async fn list_buckets(
        &self,
        request: Request<ListBucketsRequest>,
    ) -> Result<Response<ListBucketsReply>, Status> {
        let tenant = self.tenant(&request, &methods::LIST_BUCKETS)?;
        let buckets = self.0.front.objects.list_buckets(tenant).await.map_err(object_status)?;
        Ok(Response::new(ListBucketsReply { buckets }))
    }

    async fn create_bucket(
        &self,
        request: Request<BucketRequest>,
    ) -> Result<Response<Empty>, Status> {
        let tenant = self.tenant(&request, &methods::CREATE_BUCKET)?;
        let bucket = request.into_inner().bucket;
        self.0.front.objects.create_bucket(tenant, &bucket).await.map_err(object_status)?;
        Ok(Response::new(Empty {}))
    }

    async fn delete_bucket(
        &self,
        request: Request<BucketRequest>,
    ) -> Result<Response<Empty>, Status> {
        let tenant = self.tenant(&request, &methods::DELETE_BUCKET)?;
        let bucket = request.into_inner().bucket;
        self.0.front.objects.delete_bucket(tenant, &bucket).await.map_err(object_status)?;
        Ok(Response::new(Empty {}))
    }

    async fn put_object(
        &self,
        request: Request<Streaming<PutObjectRequest>>,
    ) -> Result<Response<PutObjectReply>, Status> {
        // Authorized before a byte of the stream is read.
        let tenant = self.tenant(&request, &methods::PUT_OBJECT)?;
        let _permit = self.body_permit()?;
        let mut stream = request.into_inner();
        let header = match stream.next().await {
            Some(Ok(PutObjectRequest { part: Some(put_object_request::Part::Header(h)) })) => h,
            Some(Err(status)) => return Err(status),
            _ => return Err(Status::invalid_argument("the first message must be the header")),
        };
        let PutObjectHeader { bucket, key, content_type, metadata } = header;
        let mut body = Vec::new();
        while let Some(message) = stream.next().await {
            let piece = match message?.part {
                Some(put_object_request::Part::Piece(piece)) => piece,
                _ => return Err(Status::invalid_argument("after the header, only pieces")),
            };
            if body.len() + piece.len() > GRPC_OBJECT_MAX_BYTES {
                return Err(Status::resource_exhausted(format!(
                    "the object is larger than {GRPC_OBJECT_MAX_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&piece);
        }
        let user = UserMetadata {
            content_type: (!content_type.is_empty()).then_some(content_type),
            entries: metadata.into_iter().collect(),
        };
        let objects = &self.0.front.objects;
        let size_bytes = body.len() as u64;
        let checksums = ObjectChecksums::default();
        let options = PutOptions { user: &user, checksums: &checksums, condition: None };
        let etag = objects
            .put_object_with(tenant, &bucket, &key, body.into(), options)
            .await
            .map_err(object_status)?;
        Ok(Response::new(PutObjectReply { etag: etag.to_vec(), size_bytes }))
    }

    async fn get_object(
        &self,
        request: Request<GetObjectRequest>,
    ) -> Result<Response<GetObjectStream>, Status> {
        let tenant = self.tenant(&request, &methods::GET_OBJECT)?;
        let permit = self.body_permit()?;
        let GetObjectRequest { bucket, key, has_range, range_start, range_end } =
            request.into_inner();
        if has_range && range_end < range_start {
            return Err(Status::invalid_argument("the range ends before it starts"));
        }
        let range = has_range.then_some((range_start, range_end));
        let objects = &self.0.front.objects;
        let resolve = |meta: &crate::objects::ObjectMeta| {
            let size = meta.size_bytes;
            if size > GRPC_OBJECT_MAX_BYTES as u64 && range.is_none() {
                return Err(crate::objects::ObjectError::EntityTooLarge);
            }
            match range {
                None => Ok((0, size)),
                Some((start, _)) if start >= size && size > 0 => {
                    Err(crate::objects::ObjectError::InvalidRange { size_bytes: size })
                }
                Some((start, end)) => {
                    let end = end.min(size).min(start.saturating_add(GRPC_OBJECT_MAX_BYTES as u64));
                    Ok((start.min(size), end))
                }
            }
        };
        let (meta, served, body) =
            objects.get_object_with(tenant, &bucket, &key, resolve).await.map_err(object_status)?;
        let head = GetObjectReply {
            part: Some(get_object_reply::Part::Head(GetObjectHead {
                meta: Some(object_meta(meta)),
                range_start: served.start,
                range_end: served.end,
            })),
        };
        let body = Arc::new(body);
        let pieces = body.len().div_ceil(GRPC_BODY_PIECE_BYTES);
        let stream = tokio_stream::iter(std::iter::once(Ok::<_, Status>(head)).chain(
            (0..pieces).map(move |index| {
                // The permit is held until the last piece is handed to tonic.
                let _held = &permit;
                let start = index * GRPC_BODY_PIECE_BYTES;
                let end = (start + GRPC_BODY_PIECE_BYTES).min(body.len());
                let piece = body[start..end].to_vec();
                Ok::<_, Status>(GetObjectReply { part: Some(get_object_reply::Part::Piece(piece)) })
            }),
        ));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn head_object(
        &self,
        request: Request<ObjectRequest>,
    ) -> Result<Response<ObjectMeta>, Status> {
        let tenant = self.tenant(&request, &methods::HEAD_OBJECT)?;
        let ObjectRequest { bucket, key } = request.into_inner();
        let meta =
            self.0.front.objects.head_object(tenant, &bucket, &key).await.map_err(object_status)?;
        Ok(Response::new(object_meta(meta)))
    }

    async fn delete_object(
        &self,
        request: Request<ObjectRequest>,
    ) -> Result<Response<Empty>, Status> {
        let tenant = self.tenant(&request, &methods::DELETE_OBJECT)?;
        let ObjectRequest { bucket, key } = request.into_inner();
        self.0.front.objects.delete_object(tenant, &bucket, &key).await.map_err(object_status)?;
        Ok(Response::new(Empty {}))
    }

    async fn list_objects(
        &self,
        request: Request<ListObjectsRequest>,
    ) -> Result<Response<ListObjectsReply>, Status> {
        let tenant = self.tenant(&request, &methods::LIST_OBJECTS)?;
        let ListObjectsRequest { bucket, prefix, start_after, max_keys } = request.into_inner();
        let limit = match max_keys as usize {
            0 => GRPC_LIST_MAX,
            asked => asked.min(GRPC_LIST_MAX),
        };
        let after = (!start_after.is_empty()).then_some(start_after.as_slice());
        let mut listed = self
            .0
            .front
            .objects
            .list_objects(tenant, &bucket, &prefix, after, limit + 1)
            .await
            .map_err(object_status)?;
        let truncated = listed.len() > limit;
        listed.truncate(limit);
        let objects = listed
            .into_iter()
            .map(|object| ListedObject {
                key: object.key,
                size_bytes: object.size_bytes,
                etag: object.etag.to_vec(),
                modified_unix_ms: object.modified_unix_ms,
            })
            .collect();
        Ok(Response::new(ListObjectsReply { objects, truncated }))
    }

    async fn get_manifest(
        &self,
        request: Request<ObjectRequest>,
    ) -> Result<Response<Manifest>, Status> {
        let tenant = self.tenant(&request, &methods::GET_MANIFEST)?;
        let ObjectRequest { bucket, key } = request.into_inner();
        let manifest =
            self.0.front.objects.manifest(tenant, &bucket, &key).await.map_err(object_status)?;
        let (inline, chunks) = match &manifest.body {
            ObjectBody::Inline(_) => (true, Vec::new()),
            ObjectBody::Chunks(chunks) => {
                let mut offset = 0u64;
                let refs = chunks
                    .iter()
                    .map(|chunk| {
                        let entry = ChunkRef {
                            id: chunk.id.0.to_vec(),
                            size_bytes: chunk.size_bytes,
                            offset_bytes: offset,
                        };
                        offset += u64::from(chunk.size_bytes);
                        entry
                    })
                    .collect();
                (false, refs)
            }
        };
        Ok(Response::new(Manifest {
            size_bytes: manifest.size_bytes,
            etag: manifest.etag.0.to_vec(),
            inline,
            chunks,
        }))
    }
}

fn object_meta(meta: crate::objects::ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        size_bytes: meta.size_bytes,
        etag: meta.etag.to_vec(),
        parts: meta.parts.map_or(0, u32::from),
        modified_unix_ms: meta.modified_unix_ms,
        content_type: meta.user.content_type.unwrap_or_default(),
        metadata: meta.user.entries.into_iter().collect(),
    }
}
