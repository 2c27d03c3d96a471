//! The gRPC front end (issue 8, point 3): tonic served through our own rustls acceptor
//! ([`TlsContext::server_config`]), so the cluster CA and the CRL in force (reloaded
//! without a restart) decide who connects at all, as for the key service.
//!
//! Services, all on one listener:
//! - `kiseki.data.v1.DataService` ([`data`]): a tenant's buckets and objects for HPC
//!   clients, bodies streamed in pieces, and an object's manifest (its chunks);
//! - `kiseki.admin.v1.StorageAdminService` ([`admin`]): the node, its device regions and
//!   its metadata group, read by cluster admins and SREs;
//! - `kiseki.control.v1.ControlService` ([`control`]): tenants, S3 credentials, and
//!   cluster-admin access requests and grants;
//! - `kiseki.audit.v1.AuditService` ([`audit_export`]): the audit log, a tenant's records
//!   to its admin and the system view to cluster operators;
//! - `kiseki.keys.v1.KeyService` (`crate::keys_grpc`), when the front is given one;
//! - `grpc.health.v1.Health` and server reflection (v1 and v1alpha), for tooling.
//!
//! Authorization: every method of the front's own services is a row of one table
//! ([`methods::METHODS`]) naming the API path it is authorized as; its handler asks
//! [`methods::Gate::check`] before anything else. The caller is the verified client
//! certificate (common name, key identity, the role its OU gives) plus what the
//! authorizer's scope file assigns; no header or metadata is read, so a client-set
//! `x-kiseki-role` changes nothing. Health and reflection answer any peer whose
//! certificate the handshake accepted (they hold nothing of a tenant's).
//!
//! Bounds: one message is at most [`GRPC_MESSAGE_MAX_BYTES`] either way (tonic answers
//! OUT_OF_RANGE past it); bodies travel in pieces of [`GRPC_BODY_PIECE_BYTES`]; an object
//! is at most [`GRPC_OBJECT_MAX_BYTES`]; at most [`GRPC_BODY_CALLS_MAX`] puts and gets hold
//! a body at once (more: UNAVAILABLE); handshakes and streams per connection are bounded
//! as the constants say.
//!
//! What it does not do: JWT second-stage authentication (not wired into any front yet),
//! persist access grants (they live in this node's authorizer until the control plane
//! replicates them), drain a device (the engine has no such operation), or hand out DEKs
//! for client-side sealing (the data path seals at the gateway, as S3 does).

mod admin;
mod audit_export;
mod control;
mod data;
pub mod methods;

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};

use kiseki_consensus::MetadataGroup;
use kiseki_engine::EngineHandle;
use kiseki_proto::admin::storage_admin_service_server::StorageAdminServiceServer;
use kiseki_proto::audit::audit_service_server::AuditServiceServer;
use kiseki_proto::control::control_service_server::ControlServiceServer;
use kiseki_proto::data::data_service_server::DataServiceServer;
use kiseki_proto::keys::key_service_server::KeyServiceServer;
use kiseki_security::TlsContext;
use kiseki_security::authz::Authorizer;
use kiseki_security::keymanager::{KeyManager, KeyService, KeyStoreBackend};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tonic_health::ServingStatus;

use crate::audit::AuditSink;
use crate::constants::{
    GRPC_BODY_CALLS_MAX, GRPC_BODY_PIECE_BYTES, GRPC_MESSAGE_MAX_BYTES, GRPC_OBJECT_MAX_BYTES,
    GRPC_STREAMS_PER_CONNECTION_MAX,
};
use crate::grpc_tls::{Incoming, OnHandshake, accept_tls, serve_until_stopped};
use crate::keys_grpc::GrpcKeyService;
use crate::objects::ObjectStore;
use crate::s3::S3Credentials;
use methods::Gate;

/// What the front serves from: one node's object layer, credentials, keys, metadata
/// group and engine, and its authorizer.
pub struct GrpcFront<S> {
    pub objects: Arc<ObjectStore<S>>,
    pub credentials: Arc<S3Credentials<S>>,
    /// The key manager the object layer uses: its root key and store hold the audit log.
    pub keys: Arc<Mutex<KeyManager<S>>>,
    pub meta: Arc<MetadataGroup>,
    pub engine: EngineHandle,
    /// The device the engine's shards are on, as storage admin reports it.
    pub device_path: String,
    /// The node's authorizer: policy and scope files, and the access grants the control
    /// service edits.
    pub authorizer: Arc<RwLock<Authorizer>>,
    /// Where decisions and handshakes are recorded (`None`: not recorded, for tests).
    pub audit: Option<Arc<AuditSink>>,
    /// The key service to mount beside the front's own services, if any.
    pub key_service: Option<Arc<Mutex<KeyService<S>>>>,
}

impl<S> std::fmt::Debug for GrpcFront<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcFront").field("device_path", &self.device_path).finish_non_exhaustive()
    }
}

/// What every service of the front shares.
pub(crate) struct Shared<S> {
    front: GrpcFront<S>,
    gate: Gate,
    /// One permit per put or get holding a body.
    body_calls: Arc<Semaphore>,
}

/// A running gRPC front; [`GrpcServer::shutdown`] stops it.
#[derive(Debug)]
pub struct GrpcServer {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<io::Result<()>>,
}

impl GrpcServer {
    /// Serves `front` on `listener` (TLS 1.3, client certificates of the CA and CRL
    /// `tls` holds, HTTP/2) on the current runtime.
    pub fn start<S: KeyStoreBackend + Clone + Send + 'static>(
        listener: TcpListener,
        tls: &TlsContext,
        front: GrpcFront<S>,
    ) -> io::Result<GrpcServer> {
        let local_addr = listener.local_addr()?;
        let (stop, stopping) = watch::channel(false);
        let audit = front.audit.clone();
        let on_handshake: OnHandshake = Arc::new(move |outcome, remote| {
            if let Some(audit) = &audit {
                audit.handshake(outcome.as_ref().map_err(String::as_str), &remote.to_string());
            }
            Box::pin(std::future::ready(()))
        });
        let incoming = accept_tls(listener, tls, on_handshake)?;
        let task = tokio::spawn(serve(incoming, tls.clone(), front, stopping));
        Ok(GrpcServer { local_addr, stop, task })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets calls in flight finish, and waits at most
    /// [`GRPC_DRAIN_TIMEOUT_SECS`](crate::constants::GRPC_DRAIN_TIMEOUT_SECS) for connected clients to hang up.
    pub async fn shutdown(self) -> io::Result<()> {
        let _ = self.stop.send(true);
        match self.task.await {
            Ok(result) => result,
            Err(error) => Err(io::Error::other(error)),
        }
    }
}

/// Serves every service on `incoming` until `stopping` turns true, then drains.
async fn serve<S: KeyStoreBackend + Clone + Send + 'static>(
    incoming: Incoming,
    tls: TlsContext,
    front: GrpcFront<S>,
    stopping: watch::Receiver<bool>,
) -> io::Result<()> {
    let gate = Gate::new(tls.clone(), Arc::clone(&front.authorizer), front.audit.clone());
    let key_service = front.key_service.clone();
    let shared =
        Arc::new(Shared { front, gate, body_calls: Arc::new(Semaphore::new(GRPC_BODY_CALLS_MAX)) });
    let (health_reporter, health) = tonic_health::server::health_reporter();
    let names = [
        kiseki_proto::data::data_service_server::SERVICE_NAME,
        kiseki_proto::admin::storage_admin_service_server::SERVICE_NAME,
        kiseki_proto::control::control_service_server::SERVICE_NAME,
        kiseki_proto::audit::audit_service_server::SERVICE_NAME,
    ];
    for name in names {
        health_reporter.set_service_status(name, ServingStatus::Serving).await;
    }
    let reflection = |builder: tonic_reflection::server::Builder<'static>| {
        builder
            .register_encoded_file_descriptor_set(kiseki_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection(tonic_reflection::server::Builder::configure())
        .build_v1()
        .map_err(io::Error::other)?;
    let reflection_v1alpha = reflection(tonic_reflection::server::Builder::configure())
        .build_v1alpha()
        .map_err(io::Error::other)?;
    let keys = key_service.map(|service| {
        KeyServiceServer::new(GrpcKeyService::new(service, tls.clone()))
            .max_decoding_message_size(GRPC_MESSAGE_MAX_BYTES)
            .max_encoding_message_size(GRPC_MESSAGE_MAX_BYTES)
    });

    // Health says NOT_SERVING as soon as the stop begins, before the drain.
    let reporter = health_reporter.clone();
    let mut stop_seen = stopping.clone();
    tokio::spawn(async move {
        let _ = stop_seen.wait_for(|stopped| *stopped).await;
        for name in names {
            reporter.set_service_status(name, ServingStatus::NotServing).await;
        }
    });
    let router = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(GRPC_STREAMS_PER_CONNECTION_MAX))
        .add_service(
            DataServiceServer::new(data::DataApi(Arc::clone(&shared)))
                .max_decoding_message_size(GRPC_MESSAGE_MAX_BYTES)
                .max_encoding_message_size(GRPC_MESSAGE_MAX_BYTES),
        )
        .add_service(
            StorageAdminServiceServer::new(admin::AdminApi(Arc::clone(&shared)))
                .max_decoding_message_size(GRPC_MESSAGE_MAX_BYTES)
                .max_encoding_message_size(GRPC_MESSAGE_MAX_BYTES),
        )
        .add_service(
            ControlServiceServer::new(control::ControlApi(Arc::clone(&shared)))
                .max_decoding_message_size(GRPC_MESSAGE_MAX_BYTES)
                .max_encoding_message_size(GRPC_MESSAGE_MAX_BYTES),
        )
        .add_service(
            AuditServiceServer::new(audit_export::AuditApi(Arc::clone(&shared)))
                .max_decoding_message_size(GRPC_MESSAGE_MAX_BYTES)
                .max_encoding_message_size(GRPC_MESSAGE_MAX_BYTES),
        )
        .add_optional_service(keys)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    serve_until_stopped(router, incoming, stopping).await
}

/// The wire status of an object-layer error: little for the caller (STYLE 12), the rest
/// to the log. Another tenant's bucket answers as an absent one.
pub(crate) fn object_status(error: crate::objects::ObjectError) -> tonic::Status {
    use crate::objects::ObjectError as E;
    use tonic::Status;
    match error {
        E::NoSuchTenant => Status::failed_precondition("the caller's tenant does not exist"),
        E::NoSuchBucket | E::AccessDenied => Status::not_found("no such bucket"),
        E::NoSuchKey => Status::not_found("no such key"),
        E::BucketExists => Status::already_exists("the bucket exists"),
        E::BucketNotEmpty => Status::failed_precondition("the bucket is not empty"),
        E::InvalidBucketName(why) => Status::invalid_argument(format!("bucket: {why}")),
        E::InvalidKey(why) => Status::invalid_argument(format!("key: {why}")),
        E::InvalidRange { size_bytes } => {
            Status::out_of_range(format!("the range starts past the object's {size_bytes} bytes"))
        }
        E::EntityTooLarge => Status::resource_exhausted("the object is larger than allowed"),
        E::PreconditionFailed => Status::failed_precondition("precondition failed"),
        E::TenantKeysDestroyed => Status::failed_precondition("tenant keys destroyed"),
        E::Unavailable(why) => {
            tracing::warn!(%why, "grpc: the object layer is unavailable");
            Status::unavailable("unavailable; retry later")
        }
        E::QuorumNotReached { acked, required } => {
            tracing::warn!(acked, required, "grpc: too few replicas acknowledged a write");
            Status::unavailable("too few storage nodes are available; retry later")
        }
        E::Integrity(why) => {
            tracing::error!(%why, "grpc: an integrity failure");
            Status::data_loss("integrity check failed")
        }
        other => {
            tracing::error!(error = %other, "grpc: an internal failure");
            Status::internal("internal error")
        }
    }
}

/// Statically checked: a piece and its framing fit one message.
const _: () = assert!(GRPC_BODY_PIECE_BYTES + 1024 <= GRPC_MESSAGE_MAX_BYTES);
const _: () = assert!(GRPC_OBJECT_MAX_BYTES >= GRPC_BODY_PIECE_BYTES);
