//! A dev node's metadata, key manager and S3 front end.
//!
//! - The metadata: a one-member Raft group on `meta/shard-0.redb` (the file the `keys`,
//!   `tenant` and `audit` subcommands open while the node is stopped). It has no peer, so
//!   it sends no RPC.
//! - The key manager: its root key in `meta/root.key` (0600, made on the first start and
//!   never written anywhere else), its store in the group; master-key epoch 1 is made on
//!   the first start.
//! - Tenant org `dev` (cross-tenant dedup) and one S3 access key for its workload `dev`:
//!   the key's id is kept in `meta/s3-access-key`, its secret only sealed in the metadata,
//!   and both are printed at each start (it is a development node).
//! - The S3 front end over the engine the chunk service uses, path style on `localhost`
//!   and `127.0.0.1`, virtual-host style on `<bucket>.localhost`. Every signed request is
//!   recorded as a data access of its tenant, and every unknown access key as an
//!   authentication failure (rate-limited), in the key manager's audit log (`crate::audit`).
//! - The gRPC front end (`crate::grpc`) over the same object layer, credentials and audit
//!   sink, with the key service mounted beside it (its own key manager over the same store
//!   and root key, as a second key server would be). The dev tenant's workload certificate
//!   (`tls/clients/tenant-dev`, CN `dev-workload`) is also that tenant's admin, by a
//!   built-in scope file: on a dev node it may manage the tenant's credentials, KEK and
//!   audit export. Access grants live in the node's authorizer until it stops.
//! - The background re-seal ([`crate::reseal`]): after a `keys rotate`, chunks of older
//!   master-key epochs are re-sealed to the current one, its state in `meta/reseal.json`,
//!   paused while `meta/reseal.paused` exists.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use kiseki_consensus::MetadataGroup;
use kiseki_consensus::command::DedupMode;
use kiseki_consensus::keystore::ConsensusKeyStore;
use kiseki_consensus::node::start_single;
use kiseki_engine::EngineHandle;
use kiseki_security::authz::{Authorizer, KesPolicies, RoleFiles};
use kiseki_security::keymanager::{
    AuditLog, KeyManager, KeyManagerConfig, KeyService, LocalRootKey, MemoryLocking, SystemClock,
    create_root_key_file, mlock_failures, root_key_path, tenant_of_org,
};
use kiseki_security::{OrgId, TlsContext};
use zeroize::Zeroizing;

use super::DevError;
use crate::audit::{AuditAccess, AuditConfig, AuditSink, AuditedAuth};
use crate::constants::{DEV_S3_DOMAIN, DEV_TENANT_ORG};
use crate::grpc::{GrpcFront, GrpcServer};
use crate::objects::{ObjectConfig, ObjectStore};
use crate::observe::Metrics;
use crate::reseal::{ResealConfig, ResealCounters, ResealTask};
use crate::s3::{CredentialAuth, KisekiS3, S3Credentials, S3Server};
use crate::s3_front::{VirtualHosts, configure};

/// Longest a stop waits for the audit writer to empty its queue.
const AUDIT_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The file that names the dev tenant's access key (not secret: the secret is sealed).
const ACCESS_KEY_FILE: &str = "s3-access-key";

/// The dev node's role files: no policy-file roles, and the dev tenant's workload
/// certificate (`data_dir::DEV_WORKLOAD_CN`) as that tenant's admin.
const DEV_POLICY_FILE: &[u8] = b"{}";
const DEV_SCOPE_FILE: &[u8] = br#"{"tenant-admin": ["dev/dev-workload"]}"#;

/// Where the front ends listen, bound before anything is made.
pub(super) struct FrontListeners {
    pub s3: std::net::TcpListener,
    pub grpc: std::net::TcpListener,
}

/// What a started front holds until the node stops.
pub(super) struct Front {
    group: Arc<MetadataGroup>,
    s3: S3Server,
    grpc: GrpcServer,
    audit_writer: tokio::task::JoinHandle<()>,
    reseal: ResealTask,
    pub access_key: String,
    pub secret: Zeroizing<String>,
    /// Key pages the kernel would not lock (RLIMIT_MEMLOCK); printed as a warning.
    pub mlock_failures: u64,
}

impl Front {
    pub fn group(&self) -> &Arc<MetadataGroup> {
        &self.group
    }

    pub fn s3_addr(&self) -> std::net::SocketAddr {
        self.s3.local_addr()
    }

    pub fn grpc_addr(&self) -> std::net::SocketAddr {
        self.grpc.local_addr()
    }

    /// The background re-seal's progress, for the metrics.
    pub fn reseal_counters(&self) -> Arc<ResealCounters> {
        self.reseal.counters()
    }

    /// Stops the re-seal (its batch in flight finishes and its cursor is saved), the gRPC
    /// and S3 listeners (calls in flight finish), lets the audit writer append what is
    /// queued, then stops the metadata group.
    pub async fn stop(self) -> Result<(), DevError> {
        self.reseal.stop().await;
        if let Err(error) = self.grpc.shutdown().await {
            tracing::warn!(%error, "grpc: the front end did not stop cleanly");
        }
        self.s3.shutdown().await;
        // The writer ends once the S3 service, which holds its sink, is gone.
        if tokio::time::timeout(AUDIT_DRAIN_TIMEOUT, self.audit_writer).await.is_err() {
            tracing::warn!("audit: queued data-path records were not all written at shutdown");
        }
        self.group.shutdown().await.map_err(|e| metadata(format!("stopping the group: {e}")))
    }
}

fn metadata(reason: String) -> DevError {
    DevError::Metadata { reason }
}

/// Starts the metadata group, the key manager, the dev tenant and its key, and the S3 and
/// gRPC front ends on `listeners`; `device` is the device file storage admin reports, and
/// S3 requests are counted in `metrics`.
pub(super) async fn start(
    meta: &Path,
    engine: EngineHandle,
    tls: &TlsContext,
    listeners: FrontListeners,
    device: &Path,
    metrics: Arc<Metrics>,
) -> Result<Front, DevError> {
    let group =
        Arc::new(start_single(meta).await.map_err(|e| metadata(format!("metadata group: {e}")))?);
    match start_rest(meta, &group, engine, tls, listeners, device, metrics).await {
        Ok(Rest { s3, grpc, audit_writer, reseal, access_key, secret }) => Ok(Front {
            group,
            s3,
            grpc,
            audit_writer,
            reseal,
            access_key,
            secret,
            mlock_failures: mlock_failures(),
        }),
        Err(error) => {
            let _ = group.shutdown().await;
            Err(error)
        }
    }
}

/// What [`start_rest`] started.
struct Rest {
    s3: S3Server,
    grpc: GrpcServer,
    audit_writer: tokio::task::JoinHandle<()>,
    reseal: ResealTask,
    access_key: String,
    secret: Zeroizing<String>,
}

async fn start_rest(
    meta: &Path,
    group: &Arc<MetadataGroup>,
    engine: EngineHandle,
    tls: &TlsContext,
    listeners: FrontListeners,
    device: &Path,
    metrics: Arc<Metrics>,
) -> Result<Rest, DevError> {
    let root_path = root_key_path(meta);
    if !root_path.exists() {
        create_root_key_file(&root_path).map_err(|e| metadata(e.to_string()))?;
    }
    let root = LocalRootKey::from_file(&root_path, MemoryLocking::BestEffort)
        .map_err(|e| metadata(e.to_string()))?;
    let store = ConsensusKeyStore::new(Arc::clone(group), tokio::runtime::Handle::current());
    // The audit writer's own root key and store handle: it never takes the key manager's
    // lock (see `crate::audit`).
    let audit_root = LocalRootKey::from_file(&root_path, MemoryLocking::BestEffort)
        .map_err(|e| metadata(e.to_string()))?;
    let audit_store = store.clone();
    let key_service_root = LocalRootKey::from_file(&root_path, MemoryLocking::BestEffort)
        .map_err(|e| metadata(e.to_string()))?;
    let key_service_store = store.clone();
    let mut config = KeyManagerConfig::default();
    config.memory_locking = MemoryLocking::BestEffort;
    let keys = KeyManager::new(Box::new(root), store, config, Arc::new(SystemClock))
        .map_err(|e| metadata(format!("key manager: {e}")))?;
    let keys = Arc::new(Mutex::new(keys));
    let init = Arc::clone(&keys);
    tokio::task::spawn_blocking(move || crate::objects::lock(&init).init_cluster())
        .await
        .map_err(|e| metadata(format!("key manager: {e}")))?
        .map_err(|e| metadata(format!("key manager: {e}")))?;

    let reseal_parts = (engine.clone(), Arc::clone(&keys));
    let objects = Arc::new(ObjectStore::new(
        Arc::clone(group),
        engine.clone(),
        Arc::clone(&keys),
        ObjectConfig::default(),
    ));
    let org = OrgId::parse(DEV_TENANT_ORG).map_err(|e| metadata(e.to_string()))?;
    let tenant = tenant_of_org(&org);
    objects
        .create_tenant(tenant, DedupMode::CrossTenant)
        .await
        .map_err(|e| metadata(format!("tenant {DEV_TENANT_ORG}: {e}")))?;
    let (audit, audit_writer) =
        AuditSink::start(Box::new(audit_root), audit_store, AuditConfig::default());
    let credentials = Arc::new(S3Credentials::new(Arc::clone(group), Arc::clone(&keys)));
    let key_file = meta.join(ACCESS_KEY_FILE);
    let known = match fs::read_to_string(&key_file) {
        Ok(text) => Some(text.trim().to_owned()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => return Err(DevError::Io { path: key_file, source }),
    };
    let found = match &known {
        Some(access_key) => credentials
            .lookup(access_key)
            .await
            .map_err(|e| metadata(format!("S3 access key: {e}")))?
            .map(|(_, secret)| (access_key.clone(), secret)),
        None => None,
    };
    let (access_key, secret) = match found {
        Some(pair) => pair,
        None => {
            let pair = credentials
                .create(tenant, DEV_TENANT_ORG)
                .await
                .map_err(|e| metadata(format!("S3 access key: {e}")))?;
            write_private(&key_file, pair.0.as_bytes())?;
            pair
        }
    };

    let mut builder = s3s::service::S3ServiceBuilder::new(KisekiS3::new(
        Arc::clone(&objects),
        Arc::clone(&credentials),
    ));
    builder
        .set_auth(AuditedAuth::new(CredentialAuth(Arc::clone(&credentials)), Arc::clone(&audit)));
    builder.set_access(AuditAccess::new(Arc::clone(&credentials), Arc::clone(&audit)));
    // Path style on localhost and 127.0.0.1, virtual-host style on <bucket>.localhost.
    configure(&mut builder, VirtualHosts::new([DEV_S3_DOMAIN]));
    let tokio_listener = |listener: std::net::TcpListener| {
        listener.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(listener)
    };
    let listener = tokio_listener(listeners.s3).map_err(DevError::Runtime)?;
    let s3 = S3Server::start_metered(listener, tls, builder.build(), metrics)
        .map_err(DevError::Runtime)?;

    // The key service, on a key manager of its own over the same store and root key.
    let role_files =
        || RoleFiles::parse(DEV_POLICY_FILE, DEV_SCOPE_FILE).map_err(|e| metadata(e.to_string()));
    let mut service_config = KeyManagerConfig::default();
    service_config.memory_locking = MemoryLocking::BestEffort;
    let service_keys = KeyManager::new(
        Box::new(key_service_root),
        key_service_store,
        service_config,
        Arc::new(SystemClock),
    )
    .map_err(|e| metadata(format!("key service: {e}")))?;
    let holds = crate::cli::retention_holds(meta).map_err(|e| metadata(e.to_string()))?;
    let key_authorizer = Authorizer::new(role_files()?, KesPolicies::default());
    let key_service = tokio::task::spawn_blocking(move || {
        let mut service =
            KeyService::new(service_keys, key_authorizer, AuditLog::default(), Box::new(holds));
        service.restore_policies().map(|_| service)
    })
    .await
    .map_err(|e| metadata(format!("key service: {e}")))?
    .map_err(|e| metadata(format!("key service: {e}")))?;

    let front = GrpcFront {
        objects,
        credentials,
        keys,
        meta: Arc::clone(group),
        engine,
        device_path: device.display().to_string(),
        authorizer: Arc::new(std::sync::RwLock::new(Authorizer::new(
            role_files()?,
            KesPolicies::default(),
        ))),
        audit: Some(audit),
        key_service: Some(Arc::new(Mutex::new(key_service))),
    };
    let listener = tokio_listener(listeners.grpc).map_err(DevError::Runtime)?;
    let grpc = match GrpcServer::start(listener, tls, front) {
        Ok(grpc) => grpc,
        Err(error) => {
            s3.shutdown().await;
            return Err(DevError::Runtime(error));
        }
    };
    // Last, once nothing can fail: a started task is stopped only by `Front::stop`.
    let (engine, keys) = reseal_parts;
    let reseal = ResealTask::spawn(meta.to_owned(), engine, keys, ResealConfig::default());
    Ok(Rest { s3, grpc, audit_writer, reseal, access_key, secret })
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), DevError> {
    let io = |source| DevError::Io { path: path.to_owned(), source };
    let mut file =
        fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io)?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(io)
}
