//! A node's key manager and front ends, over its metadata group and engine.
//!
//! - The key manager: its root key in `meta/root.key` (0600; made on a first start when
//!   [`RootKey::CreateIfMissing`], never written anywhere else), its store in the metadata
//!   group. Master-key epoch 1 is made at start on a single node; in a cluster, by whichever
//!   node leads the group first (a follower cannot propose), retried until the group has it.
//! - The object layer (`crate::objects`) cutting objects into [`ObjectConfig`]'s chunks,
//!   sealed into this node's engine; [`object_store`] is where it is built, and where a
//!   replicated chunk backend will be given to it.
//! - The S3 front end: path style on every host, virtual-host style under the node's S3
//!   domains. Every signed request is recorded as a data access of its tenant, and every
//!   unknown access key as an authentication failure (rate-limited), in the key manager's
//!   audit log (`crate::audit`).
//! - The gRPC front end (`crate::grpc`) over the same object layer, credentials and audit
//!   sink, with the key service mounted beside it (its own key manager over the same store
//!   and root key, as a second key server would be). Roles come from the certificates and
//!   the node's role files; access grants live in the node's authorizer until it stops.
//! - The background re-seal ([`crate::reseal`]): after a `keys rotate`, chunks of older
//!   master-key epochs are re-sealed to the current one, its state in `meta/reseal.json`,
//!   paused while `meta/reseal.paused` exists.
//!
//! What it does not do: create tenants or S3 keys (the `tenant` and `s3-credentials` admin
//! subcommands do, and `dev` for its dev tenant), or stop the metadata group (its owner does,
//! after [`Front::stop`]).

use std::path::Path;
use std::sync::{Arc, Mutex};

use kiseki_consensus::MetadataGroup;
use kiseki_consensus::keystore::ConsensusKeyStore;
use kiseki_engine::EngineHandle;
use kiseki_security::TlsContext;
use kiseki_security::authz::{Authorizer, KesPolicies, RoleFiles};
use kiseki_security::keymanager::{
    AuditLog, KeyManager, KeyManagerConfig, KeyService, LocalRootKey, MemoryLocking, SystemClock,
    create_root_key_file, mlock_failures, root_key_path,
};

use super::{NodeError, RootKey};
use crate::audit::{AuditAccess, AuditConfig, AuditSink, AuditedAuth};
use crate::chunks::Chunks;
use crate::constants::NODE_MASTER_KEY_RETRY;
use crate::grpc::{GrpcFront, GrpcServer};
use crate::objects::{ObjectConfig, ObjectStore};
use crate::observe::Metrics;
use crate::reseal::{ResealConfig, ResealCounters, ResealTask};
use crate::s3::{CredentialAuth, KisekiS3, S3Credentials, S3Server};
use crate::s3_front::{VirtualHosts, configure};

/// Longest a stop waits for the audit writer to empty its queue.
const AUDIT_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The key manager of a node: its store is the metadata group.
pub(crate) type Keys = KeyManager<ConsensusKeyStore>;
/// The object layer of a node.
pub(crate) type Objects = ObjectStore<ConsensusKeyStore>;
/// The S3 credentials of a node.
pub(crate) type Credentials = S3Credentials<ConsensusKeyStore>;

/// What the front ends are started with.
pub(super) struct FrontSpec<'a> {
    pub meta: &'a Path,
    pub group: Arc<MetadataGroup>,
    pub engine: EngineHandle,
    /// Where objects keep their chunks: `engine` alone, or replicas over the fabric.
    pub chunks: Chunks,
    pub tls: &'a TlsContext,
    pub s3: std::net::TcpListener,
    pub grpc: std::net::TcpListener,
    /// The device storage admin reports.
    pub device: &'a Path,
    /// Where S3 requests are counted.
    pub metrics: Arc<Metrics>,
    pub objects: ObjectConfig,
    pub role_files: RoleFiles,
    pub s3_domains: &'a [String],
    pub root_key: RootKey,
    /// `Some(this node's id)` in a cluster: the first master-key epoch is made by the leader.
    pub master_key_by_leader: Option<u64>,
}

/// What a started front holds until the node stops.
pub(super) struct Front {
    objects: Arc<Objects>,
    credentials: Arc<Credentials>,
    s3: S3Server,
    grpc: GrpcServer,
    audit_writer: tokio::task::JoinHandle<()>,
    reseal: ResealTask,
    master_key: Option<tokio::task::JoinHandle<()>>,
    /// Key pages the kernel would not lock (RLIMIT_MEMLOCK); printed as a warning.
    pub mlock_failures: u64,
}

impl Front {
    pub fn objects(&self) -> &Arc<Objects> {
        &self.objects
    }

    pub fn credentials(&self) -> &Arc<Credentials> {
        &self.credentials
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

    /// Stops the master-key wait, the re-seal (its batch in flight finishes and its cursor
    /// is saved), the gRPC and S3 listeners (calls in flight finish), and lets the audit
    /// writer append what is queued.
    pub async fn stop(self) -> Result<(), NodeError> {
        if let Some(task) = &self.master_key {
            task.abort();
        }
        self.reseal.stop().await;
        if let Err(error) = self.grpc.shutdown().await {
            tracing::warn!(%error, "grpc: the front end did not stop cleanly");
        }
        self.s3.shutdown().await;
        // The writer ends once the S3 service, which holds its sink, is gone.
        if tokio::time::timeout(AUDIT_DRAIN_TIMEOUT, self.audit_writer).await.is_err() {
            tracing::warn!("audit: queued data-path records were not all written at shutdown");
        }
        Ok(())
    }
}

fn metadata(reason: String) -> NodeError {
    NodeError::Metadata { reason }
}

/// Builds the node's object layer: chunks sealed at this node and kept in `chunks`,
/// manifests in `group`. The one place it is made.
fn object_store(
    group: &Arc<MetadataGroup>,
    chunks: Chunks,
    keys: &Arc<Mutex<Keys>>,
    config: ObjectConfig,
) -> Objects {
    ObjectStore::with_chunks(Arc::clone(group), chunks, Arc::clone(keys), config)
}

/// Starts the key manager, the object layer, the audit writer, the S3 and gRPC front ends
/// and the re-seal; see the module's notes.
pub(super) async fn start(spec: FrontSpec<'_>) -> Result<Front, NodeError> {
    let root_path = root_key_path(spec.meta);
    if !root_path.exists() {
        match spec.root_key {
            RootKey::CreateIfMissing => {
                create_root_key_file(&root_path).map_err(|e| metadata(e.to_string()))?
            }
            RootKey::MustExist => return Err(NodeError::RootKeyMissing { path: root_path }),
        }
    }
    // Three key managers' roots over one file: the front's, the audit writer's (it never
    // takes the front's lock; see `crate::audit`) and the key service's.
    let root = || {
        LocalRootKey::from_file(&root_path, MemoryLocking::BestEffort)
            .map_err(|e| metadata(e.to_string()))
    };
    let store = ConsensusKeyStore::new(Arc::clone(&spec.group), tokio::runtime::Handle::current());
    let keys = Arc::new(Mutex::new(key_manager(root()?, store.clone(), "key manager")?));
    let master_key = match spec.master_key_by_leader {
        None => {
            let init = Arc::clone(&keys);
            tokio::task::spawn_blocking(move || crate::objects::lock(&init).init_cluster())
                .await
                .map_err(|e| metadata(format!("key manager: {e}")))?
                .map_err(|e| metadata(format!("key manager: {e}")))?;
            None
        }
        Some(node_id) => Some(tokio::spawn(make_master_key_when_leading(
            Arc::clone(&spec.group),
            Arc::clone(&keys),
            node_id,
        ))),
    };
    match start_servers(spec, root, store, &keys).await {
        Ok(servers) => Ok(Front { master_key, mlock_failures: mlock_failures(), ..servers }),
        Err(error) => {
            if let Some(task) = master_key {
                task.abort();
            }
            Err(error)
        }
    }
}

/// The object layer, the audit writer, S3, gRPC and the re-seal, in a [`Front`] whose
/// master-key task and mlock count the caller sets.
async fn start_servers(
    spec: FrontSpec<'_>,
    root: impl Fn() -> Result<LocalRootKey, NodeError>,
    store: ConsensusKeyStore,
    keys: &Arc<Mutex<Keys>>,
) -> Result<Front, NodeError> {
    let objects = Arc::new(object_store(&spec.group, spec.chunks.clone(), keys, spec.objects));
    let (audit, audit_writer) =
        AuditSink::start(Box::new(root()?), store.clone(), AuditConfig::default());
    let credentials = Arc::new(S3Credentials::new(Arc::clone(&spec.group), Arc::clone(keys)));

    let mut builder = s3s::service::S3ServiceBuilder::new(KisekiS3::new(
        Arc::clone(&objects),
        Arc::clone(&credentials),
    ));
    builder
        .set_auth(AuditedAuth::new(CredentialAuth(Arc::clone(&credentials)), Arc::clone(&audit)));
    builder.set_access(AuditAccess::new(Arc::clone(&credentials), Arc::clone(&audit)));
    configure(&mut builder, VirtualHosts::new(spec.s3_domains));
    let listener = super::tokio_listener(spec.s3).map_err(NodeError::Runtime)?;
    let s3 = S3Server::start_metered(listener, spec.tls, builder.build(), spec.metrics)
        .map_err(NodeError::Runtime)?;

    // The key service, on a key manager of its own over the same store and root key.
    let started = async {
        let service_keys = key_manager(root()?, store, "key service")?;
        let holds = crate::cli::retention_holds(spec.meta).map_err(|e| metadata(e.to_string()))?;
        let key_authorizer = Authorizer::new(spec.role_files.clone(), KesPolicies::default());
        let key_service = tokio::task::spawn_blocking(move || {
            let mut service =
                KeyService::new(service_keys, key_authorizer, AuditLog::default(), Box::new(holds));
            service.restore_policies().map(|_| service)
        })
        .await
        .map_err(|e| metadata(format!("key service: {e}")))?
        .map_err(|e| metadata(format!("key service: {e}")))?;
        let front = GrpcFront {
            objects: Arc::clone(&objects),
            credentials: Arc::clone(&credentials),
            keys: Arc::clone(keys),
            meta: Arc::clone(&spec.group),
            engine: spec.engine.clone(),
            device_path: spec.device.display().to_string(),
            authorizer: Arc::new(std::sync::RwLock::new(Authorizer::new(
                spec.role_files,
                KesPolicies::default(),
            ))),
            audit: Some(audit),
            key_service: Some(Arc::new(Mutex::new(key_service))),
        };
        let listener = super::tokio_listener(spec.grpc).map_err(NodeError::Runtime)?;
        GrpcServer::start(listener, spec.tls, front).map_err(NodeError::Runtime)
    };
    let grpc = match started.await {
        Ok(grpc) => grpc,
        Err(error) => {
            s3.shutdown().await;
            return Err(error);
        }
    };
    // Last, once nothing can fail: a started task is stopped only by `Front::stop`.
    let reseal = ResealTask::spawn(
        spec.meta.to_owned(),
        spec.engine,
        Arc::clone(keys),
        ResealConfig::default(),
    );
    Ok(Front {
        objects,
        credentials,
        s3,
        grpc,
        audit_writer,
        reseal,
        master_key: None,
        mlock_failures: 0,
    })
}

fn key_manager(
    root: LocalRootKey,
    store: ConsensusKeyStore,
    what: &str,
) -> Result<Keys, NodeError> {
    let mut config = KeyManagerConfig::default();
    config.memory_locking = MemoryLocking::BestEffort;
    KeyManager::new(Box::new(root), store, config, Arc::new(SystemClock))
        .map_err(|e| metadata(format!("{what}: {e}")))
}

/// In a cluster: while this node leads the group, makes master-key epoch 1 if the group has
/// none, retrying (a new leader's view may not yet show an epoch its term committed) until
/// the group has one; then ends.
async fn make_master_key_when_leading(
    group: Arc<MetadataGroup>,
    keys: Arc<Mutex<Keys>>,
    node_id: u64,
) {
    let mut metrics = group.raft().metrics();
    loop {
        let leading = metrics.borrow_and_update().current_leader == Some(node_id);
        let keys = Arc::clone(&keys);
        let made = tokio::task::spawn_blocking(move || {
            let mut keys = crate::objects::lock(&keys);
            if leading {
                keys.init_cluster().map(|_| true)
            } else {
                keys.master_epoch().map(|_| true)
            }
        })
        .await;
        match made {
            Ok(Ok(_)) => {
                tracing::info!(target: "kiseki::keys", node = node_id, "the cluster has a master key");
                return;
            }
            Ok(Err(error)) if leading => {
                tracing::warn!(target: "kiseki::keys", %error, "the first master key: retrying");
            }
            Ok(Err(_)) => {}
            Err(error) => {
                tracing::warn!(target: "kiseki::keys", %error, "the first master key: the task failed");
            }
        }
        // Wake on a change of leader, or try again after a while either way.
        if let Ok(Err(_)) = tokio::time::timeout(NODE_MASTER_KEY_RETRY, metrics.changed()).await {
            return; // The group stopped.
        }
    }
}
