//! The node runner `kiseki-server dev` ([`crate::dev`]) and `kiseki-server run`
//! ([`crate::run`]) share: given what each resolved (a started engine, the node's TLS
//! context, the shape of its metadata, bound listeners, how objects are cut), it starts the
//! rest of a node, serves until SIGINT or SIGTERM, and stops it cleanly.
//!
//! A start ([`Node::start`]), in order: the async runtime and the signal handlers (from then
//! on a signal stops the node cleanly instead of killing it), the CRL reload, the metadata
//! ([`metadata`]: a one-member group, or this node's member of a cluster's groups), the
//! fabric server (one `TcpServer` on the fabric address: Raft RPCs to the metadata, every
//! other operation to the chunk service; [`handler`]), the key manager with the S3 and gRPC
//! front ends, the audit writer and the background re-seal ([`front`]), and the admin server
//! (Prometheus metrics, `/healthz`, `/readyz`). [`Node::serve`] prints the ready line, waits
//! for a signal, and stops: `/readyz` turns 503, the fabric stops accepting and lets the
//! requests it read finish (its shutdown grace), the re-seal saves its cursor, the front ends
//! drain, the audit writer appends what is queued, the metadata stops, the engine shuts down
//! (every acknowledged put is already durable), and the stopped line is printed.
//!
//! What it does not do: make or check a data dir, a device or certificates (its callers do:
//! `dev` on its generated layout, `run` from a configuration), create tenants or print
//! secrets (`dev` does that for its dev tenant), repair or rebalance replicas.
//!
//! Where objects keep their chunks: a single node in its own engine; a cluster member in
//! the members' chunk services through the fabric ([`replicated_chunks`]: every member,
//! this one included, R = min(3, members), W = a majority of R), so an object a node took
//! reads while that node is down.
//!
//! In a cluster the S3 and gRPC front ends propose and read through this node's member of the
//! metadata group: they answer on the group's leader, and on a follower they answer
//! "unavailable" until requests are forwarded to the leader. The cluster's first master-key
//! epoch is made by whichever node first leads the group.
//!
//! Invariants: every listener is bound by the caller before anything is made, so a port in
//! use is refused first; whatever a failed start had started is stopped again, the engine
//! last; nothing here prints or logs key material.

mod front;
mod handler;
mod metadata;

pub use metadata::{MemberSpec, MetadataSpec};
pub(crate) use metadata::{initialize_groups, log_leader_changes};

use std::fmt;
use std::fs::{self, File, TryLockError};
use std::future::Future;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiseki_devices::OpenOptions as DeviceOptions;
use kiseki_engine::constants::CHUNK_SIZE_MAX_BYTES;
use kiseki_engine::store_file::{self, FileStore, FormatPolicy, StoreFileError};
use kiseki_engine::{Engine, EngineError};
use kiseki_fabric::constants::TENANT_REFS_MAX_DEFAULT;
use kiseki_fabric::{
    BreakerConfig, ChunkClient, ChunkService, ConnectionStats, Endpoint, FabricSelector,
    ReplicationConfig, Replicator, ServerStartError, TcpConfig, TcpServer, TcpServerConfig,
    TcpTransport,
};
use kiseki_security::authz::{Authorizer, RoleFiles};
use kiseki_security::{CrlPoller, PkiError, TlsContext};
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::chunks::{Chunks, ReplicatedChunks};
use crate::constants::{
    NODE_CORES_MAX, NODE_DEVICE_BUFFERS, NODE_DEVICE_QUEUE_DEPTH, NODE_MANIFEST_BYTES_MAX,
    NODE_SHARD_BYTES_MIN,
};
use crate::objects::ObjectConfig;
use crate::observe::{AdminServer, MeteredHandler, Metrics, Sources};

pub(crate) use front::{Credentials, Objects};

/// How often a terminal's progress line is redrawn.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// Where a node writes what it says.
pub struct Output<'a> {
    /// What a user reads: paths, addresses, the ready and stopped lines.
    pub out: &'a mut dyn Write,
    /// Progress of slow steps.
    pub progress: &'a mut dyn Write,
    /// Whether `progress` is a terminal (a redrawn line) or not (a line at each end).
    pub progress_is_terminal: bool,
}

impl fmt::Debug for Output<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Output").field("progress_is_terminal", &self.progress_is_terminal).finish()
    }
}

/// What a node is started with, resolved by its caller.
#[derive(Debug)]
pub struct NodeSpec {
    /// The node's identity: every listener serves it; Raft RPCs to peers present it.
    pub tls: TlsContext,
    /// `DATA/meta`: the metadata store, the root key, the re-seal's state.
    pub meta_dir: PathBuf,
    /// The engine's device, as storage admin reports it.
    pub device_path: PathBuf,
    pub metadata: MetadataSpec,
    pub listeners: NodeListeners,
    pub objects: ObjectConfig,
    /// The gRPC front's and the key service's roles beyond the certificates'.
    pub role_files: RoleFiles,
    /// Domains under which S3 takes virtual-host style requests (`<bucket>.<domain>`);
    /// every other host is path style.
    pub s3_domains: Vec<String>,
    pub root_key: RootKey,
}

/// What a start does when the key manager's root key (`meta/root.key`) is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootKey {
    /// Makes it (0600): a single node, or the node that starts a cluster.
    CreateIfMissing,
    /// Refuses to start: a cluster member holds the cluster's root key, copied from the
    /// node that made it; a key of its own could not open what the others sealed.
    MustExist,
}

/// The sockets a node serves, bound before anything is made.
#[derive(Debug)]
pub struct NodeListeners {
    /// Chunks between nodes and HPC clients, and Raft RPCs (TCP, TLS 1.3, mTLS).
    pub fabric: std::net::TcpListener,
    /// Metrics and health (plain HTTP).
    pub admin: std::net::TcpListener,
    /// S3 (HTTPS).
    pub s3: std::net::TcpListener,
    /// gRPC (HTTP/2 over TLS 1.3, client certificates).
    pub grpc: std::net::TcpListener,
}

/// The addresses a node serves, as bound (a port 0 became a real one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeAddrs {
    pub fabric: SocketAddr,
    pub admin: SocketAddr,
    pub s3: SocketAddr,
    pub grpc: SocketAddr,
}

/// Why a node did not start, or did not stop cleanly.
#[derive(Debug)]
#[non_exhaustive]
pub enum NodeError {
    /// An address cannot be listened on (in use, not ours, no permission); `what` names it
    /// as the operator gave it (a flag or a configuration field).
    Listen {
        what: &'static str,
        addr: SocketAddr,
        source: io::Error,
    },
    /// The metadata, the key manager or a front end did not start or stop.
    Metadata {
        reason: String,
    },
    /// A cluster member without the cluster's root key.
    RootKeyMissing {
        path: PathBuf,
    },
    Io {
        path: PathBuf,
        source: io::Error,
    },
    /// The CRL reload or the Raft RPC transport could not be set up.
    Tls(PkiError),
    /// The engine did not start, or did not stop cleanly.
    Engine {
        device: PathBuf,
        source: EngineError,
    },
    /// The fabric server did not start.
    Fabric(ServerStartError),
    /// The async runtime or a signal handler failed.
    Runtime(io::Error),
    /// Writing to the output failed.
    Output(io::Error),
}

/// A started node: everything serving, until [`Node::serve`] or [`Node::stop`].
pub struct Node {
    runtime: tokio::runtime::Runtime,
    engine: Engine,
    device_path: PathBuf,
    parts: Parts,
}

/// What [`Node::start`] started on the runtime.
struct Parts {
    metadata: metadata::Metadata,
    front: front::Front,
    fabric: TcpServer,
    admin: AdminServer,
    interrupt: Signal,
    terminate: Signal,
    _crl_poller: CrlPoller,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node").field("addrs", &self.addrs()).finish_non_exhaustive()
    }
}

/// Binds `addr`; a failure names the address as `what` (a flag or a field).
pub fn bind(what: &'static str, addr: SocketAddr) -> Result<std::net::TcpListener, NodeError> {
    std::net::TcpListener::bind(addr).map_err(|source| NodeError::Listen { what, addr, source })
}

/// Starts an engine on `store` (formatting as `policy` says) and counts the chunks it
/// recovered. Errors are the engine's, typed (`WrongCluster`, ...), for the caller to word.
pub fn start_engine(store: &FileStore, policy: FormatPolicy) -> Result<(Engine, u64), EngineError> {
    let engine = store.start(policy)?;
    match engine.handle().stats_blocking() {
        Ok(stats) => Ok((engine, stats.iter().map(|shard| shard.chunks).sum())),
        Err(error) => {
            let _ = engine.shutdown();
            Err(error)
        }
    }
}

impl Node {
    /// Starts everything but the engine (already started) on a runtime of its own; see the
    /// module's notes. On failure, whatever was started is stopped, the engine too.
    pub fn start(spec: NodeSpec, engine: Engine) -> Result<Node, NodeError> {
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("kiseki-front")
            .build()
        {
            Ok(runtime) => runtime,
            Err(error) => {
                let _ = engine.shutdown();
                return Err(NodeError::Runtime(error));
            }
        };
        let device_path = spec.device_path.clone();
        match runtime.block_on(start_parts(spec, &engine)) {
            Ok(parts) => Ok(Node { runtime, engine, device_path, parts }),
            Err(error) => {
                let _ = engine.shutdown();
                Err(error)
            }
        }
    }

    pub fn addrs(&self) -> NodeAddrs {
        NodeAddrs {
            fabric: self.parts.fabric.local_addr(),
            admin: self.parts.admin.local_addr(),
            s3: self.parts.front.s3_addr(),
            grpc: self.parts.front.grpc_addr(),
        }
    }

    /// The object layer the front ends serve.
    pub(crate) fn objects(&self) -> &Arc<Objects> {
        self.parts.front.objects()
    }

    /// The S3 credentials the front ends check.
    pub(crate) fn credentials(&self) -> &Arc<Credentials> {
        self.parts.front.credentials()
    }

    /// Key pages the kernel would not lock (`RLIMIT_MEMLOCK`), for a warning.
    pub fn mlock_failures(&self) -> u64 {
        self.parts.front.mlock_failures
    }

    /// The metadata as the start summary names it: this node's place in its group.
    pub fn metadata_summary(&self) -> String {
        self.parts.metadata.summary()
    }

    /// Runs `future` on the node's runtime (a caller's own start-up step).
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// Prints the ready line, serves until SIGINT or SIGTERM, stops (see the module's
    /// notes) and prints the stopped line.
    pub fn serve(mut self, out: &mut dyn Write) -> Result<(), NodeError> {
        let line = format!(
            "ready: serving the fabric on {}; stop with Ctrl-C or SIGTERM",
            self.parts.fabric.local_addr()
        );
        if let Err(error) = writeln!(out, "{line}").and_then(|()| out.flush()) {
            let _ = self.stop();
            return Err(NodeError::Output(error));
        }
        let parts = &mut self.parts;
        let reason = self.runtime.block_on(async {
            tokio::select! {
                _ = parts.interrupt.recv() => "SIGINT",
                _ = parts.terminate.recv() => "SIGTERM",
            }
        });
        let grace = TcpServerConfig::default().shutdown_grace.as_secs();
        let _ = writeln!(
            out,
            "{reason}: stopping: no new connections; requests in flight finish (up to {grace} s)"
        );
        let _ = out.flush();
        let stats = self.stop()?;
        writeln!(
            out,
            "stopped: served {} connections and {} requests ({} handshakes refused); the engine \
             shut down cleanly",
            stats.connections_opened, stats.requests, stats.handshakes_failed
        )
        .map_err(NodeError::Output)
    }

    /// Stops everything now (see the module's notes); returns what the fabric served.
    pub fn stop(self) -> Result<ConnectionStats, NodeError> {
        let Node { runtime, engine, device_path, parts } = self;
        let stopped = runtime.block_on(parts.stop());
        // The engine before the runtime, as it was started: nothing on the runtime uses it now.
        let engine =
            engine.shutdown().map_err(|source| NodeError::Engine { device: device_path, source });
        let stats = stopped?;
        engine?;
        Ok(stats)
    }
}

/// A cluster member's chunk backend: every member's chunk service (this node's included,
/// through its own fabric listener, as any client reaches it), R = min(3, members) replicas,
/// W = a majority of R (`ReplicationConfig::default`). Each member is named `node-<id>`
/// (placement keys on it, so ids, not addresses, decide where chunks live) and its
/// certificate is checked against the IP of its fabric address: node certificates name
/// their IPs (`kiseki-server cert issue --san`).
fn replicated_chunks(member: &MemberSpec, tls: &TlsContext) -> Result<ReplicatedChunks, NodeError> {
    let endpoint = |id: u64, addr: SocketAddr| Endpoint {
        node: format!("node-{id}"),
        addr,
        server_name: addr.ip().to_string(),
    };
    let nodes: Vec<Endpoint> = std::iter::once(endpoint(member.node_id, member.advertise))
        .chain(member.peers.iter().map(|(&id, &addr)| endpoint(id, addr)))
        .collect();
    let failed = |error: &dyn fmt::Display| NodeError::Metadata {
        reason: format!("chunk replication: {error}"),
    };
    let transport = TcpTransport::new(tls, TcpConfig::default()).map_err(|e| failed(&e))?;
    let selector = FabricSelector::new(Arc::new(transport), BreakerConfig::default())
        .map_err(|e| failed(&e))?;
    let client = ChunkClient::new(Arc::new(selector));
    let replicator =
        Replicator::new(client, ReplicationConfig::default()).map_err(|e| failed(&e))?;
    ReplicatedChunks::new(replicator, nodes).map_err(|e| failed(&e))
}

async fn start_parts(spec: NodeSpec, engine: &Engine) -> Result<Parts, NodeError> {
    // Handlers first: a signal from here on stops the node cleanly instead of killing it.
    let interrupt = signal(SignalKind::interrupt()).map_err(NodeError::Runtime)?;
    let terminate = signal(SignalKind::terminate()).map_err(NodeError::Runtime)?;
    let crl_poller = spec.tls.spawn_crl_poller().map_err(NodeError::Tls)?;
    let metrics = Arc::new(Metrics::new());
    let NodeListeners { fabric, admin, s3, grpc } = spec.listeners;
    let metadata = metadata::Metadata::start(&spec.metadata, &spec.meta_dir, &spec.tls).await?;
    // The fabric before the front ends: a cluster's Raft RPCs flow while they start.
    let chunks = ChunkService::new(engine.handle(), Authorizer::default(), TENANT_REFS_MAX_DEFAULT);
    let service = handler::NodeHandler::new(metadata.raft_handler(), Arc::new(chunks));
    let service = Arc::new(MeteredHandler::new(Arc::clone(&metrics), Arc::new(service)));
    let fabric = match tokio_listener(fabric).map_err(NodeError::Runtime).and_then(|listener| {
        TcpServer::start(listener, &spec.tls, TcpServerConfig::default(), service)
            .map_err(NodeError::Fabric)
    }) {
        Ok(fabric) => fabric,
        Err(error) => {
            let _ = metadata.shutdown().await;
            return Err(error);
        }
    };
    let chunks = match &spec.metadata {
        MetadataSpec::Single => Chunks::Local(engine.handle()),
        MetadataSpec::Member(member) => match replicated_chunks(member, &spec.tls) {
            Ok(chunks) => Chunks::Replicated(chunks),
            Err(error) => {
                fabric.shutdown().await;
                let _ = metadata.shutdown().await;
                return Err(error);
            }
        },
    };
    let front_spec = front::FrontSpec {
        meta: &spec.meta_dir,
        group: Arc::clone(metadata.group()),
        engine: engine.handle(),
        chunks,
        tls: &spec.tls,
        s3,
        grpc,
        device: &spec.device_path,
        metrics: Arc::clone(&metrics),
        objects: spec.objects,
        role_files: spec.role_files,
        s3_domains: &spec.s3_domains,
        root_key: spec.root_key,
        master_key_by_leader: metadata.cluster_node_id(),
    };
    let front = match front::start(front_spec).await {
        Ok(front) => front,
        Err(error) => {
            fabric.shutdown().await;
            let _ = metadata.shutdown().await;
            return Err(error);
        }
    };
    let sources = Sources {
        engine: engine.handle(),
        connections: Some(fabric.counters()),
        metadata: Some(Arc::clone(metadata.group())),
        reseal: Some(front.reseal_counters()),
    };
    let admin = match tokio_listener(admin)
        .and_then(|listener| AdminServer::start(listener, metrics, sources))
    {
        Ok(admin) => admin,
        Err(error) => {
            fabric.shutdown().await;
            let _ = front.stop().await;
            let _ = metadata.shutdown().await;
            return Err(NodeError::Runtime(error));
        }
    };
    Ok(Parts { metadata, front, fabric, admin, interrupt, terminate, _crl_poller: crl_poller })
}

impl Parts {
    /// The stop of the module's notes, up to (not including) the engine.
    async fn stop(self) -> Result<ConnectionStats, NodeError> {
        self.admin.set_stopping();
        // Taken before the drain: no connection opens after the stop, and the requests it
        // lets finish were read (and counted) before it.
        let stats = self.fabric.stats();
        self.fabric.shutdown().await;
        self.admin.shutdown().await;
        let front = self.front.stop().await;
        let metadata = self.metadata.shutdown().await;
        front?;
        metadata?;
        Ok(stats)
    }
}

fn tokio_listener(listener: std::net::TcpListener) -> io::Result<tokio::net::TcpListener> {
    listener.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(listener)
}

/// How each reactor opens its device: [`NODE_DEVICE_BUFFERS`] buffers as large as the
/// largest chunk, and their request slots.
pub fn device_options() -> DeviceOptions {
    DeviceOptions {
        queue_depth: NODE_DEVICE_QUEUE_DEPTH,
        buffer_count: NODE_DEVICE_BUFFERS,
        buffer_size_bytes: CHUNK_SIZE_MAX_BYTES,
        ..DeviceOptions::default()
    }
}

/// Reactors (and shards) for a device of `device_size_bytes` when none is asked for: one
/// per core, leaving one to the front ends, and no more than the device feeds.
pub fn default_shards(device_size_bytes: u64) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let fits = usize::try_from(device_size_bytes / NODE_SHARD_BYTES_MIN).unwrap_or(usize::MAX);
    cores.saturating_sub(1).min(NODE_CORES_MAX).min(fits).max(1)
}

/// Says, before the summary, that key pages could not be locked (`RLIMIT_MEMLOCK`).
pub fn warn_mlock_failures(failures: u64, out: &mut dyn Write) -> io::Result<()> {
    if failures == 0 {
        return Ok(());
    }
    writeln!(
        out,
        "warning: {failures} key page(s) could not be locked in memory (RLIMIT_MEMLOCK); keys \
         may be swapped out: raise it with `ulimit -l`"
    )
}

/// Whether the node whose data dir is `data_dir` has (or had) chunks on a device: a `dev`
/// node's device file, or the manifest a `dev` or `run` node writes once it formatted one.
pub fn holds_chunks(data_dir: &Path) -> bool {
    data_dir.join(MANIFEST_FILE).exists() || crate::dev::device_path(data_dir).exists()
}

/// A node's manifest under its data dir (`dev` and `run` alike; its `kind` tells them
/// apart).
pub const MANIFEST_FILE: &str = "meta/node.json";

/// The lock a node holds on its data dir (`meta/lock`, flock) while it runs.
pub(crate) const LOCK_FILE: &str = "meta/lock";

/// Why a data dir's lock was not taken.
#[derive(Debug)]
pub(crate) enum LockError {
    /// Another process holds it.
    InUse,
    Io(io::Error),
}

/// Takes the lock file at `path` (made 0600 if absent), held until the file is dropped.
pub(crate) fn lock_data_dir(path: &Path) -> Result<File, LockError> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(LockError::Io)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(LockError::InUse),
        Err(TryLockError::Error(source)) => Err(LockError::Io(source)),
    }
}

/// 16 random bytes from the kernel, as 32 hex digits.
pub(crate) fn random_id() -> io::Result<String> {
    let mut bytes = [0u8; 16];
    File::open("/dev/urandom").and_then(|mut urandom| urandom.read_exact(&mut bytes))?;
    Ok(crate::hex::encode(&bytes))
}

/// 32 hex digits as 16 bytes: a node, device or cluster id.
pub(crate) fn parse_id(hex: &str) -> Option<[u8; 16]> {
    crate::hex::decode(hex)
}

/// The node manifest (`meta/node.json`) a mode reads: `dev`'s or `run`'s.
pub(crate) struct ManifestKind {
    /// Its `kind` field.
    pub kind: &'static str,
    /// The format version this build reads.
    pub version: u32,
    /// What the node is called in a refusal ("dev node").
    pub what: &'static str,
    /// The other mode's `kind`, and what to tell whoever points this mode at its data dir.
    pub other: (&'static str, &'static str),
}

/// Why a manifest was not read: the file, or what it holds.
pub(crate) enum ManifestError {
    Io(io::Error),
    Bad(String),
}

/// Reads a manifest of `expected`'s kind from `file`: at most
/// [`NODE_MANIFEST_BYTES_MAX`] bytes, its `kind` checked before its fields (the other
/// mode's manifest is named as such), then its version (`version_of`).
pub(crate) fn read_manifest<T: serde::de::DeserializeOwned>(
    file: File,
    expected: &ManifestKind,
    version_of: impl FnOnce(&T) -> u32,
) -> Result<T, ManifestError> {
    let bad = ManifestError::Bad;
    let mut bytes = Vec::new();
    file.take(NODE_MANIFEST_BYTES_MAX + 1).read_to_end(&mut bytes).map_err(ManifestError::Io)?;
    if bytes.len() as u64 > NODE_MANIFEST_BYTES_MAX {
        return Err(bad(format!("larger than {NODE_MANIFEST_BYTES_MAX} bytes")));
    }
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    match value.get("kind").and_then(serde_json::Value::as_str) {
        Some(kind) if kind == expected.kind => {}
        Some(kind) if kind == expected.other.0 => return Err(bad(expected.other.1.to_owned())),
        kind => {
            let kind = kind.map_or_else(|| "nothing".to_owned(), |kind| format!("{kind:?}"));
            return Err(bad(format!("it describes a {kind}, not a {}", expected.what)));
        }
    }
    let manifest: T = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
    let version = version_of(&manifest);
    if version != expected.version {
        return Err(bad(format!(
            "format version {version} (this build reads version {})",
            expected.version
        )));
    }
    Ok(manifest)
}

/// What a loaded node manifest (dev's or run's) must hold whatever its kind: every id 32 hex
/// digits, and the shards a first start could have made (so a damaged manifest cannot start
/// a million reactors or cut the device into shards too small to open). `Err` says which.
pub(crate) fn check_manifest(
    ids: &[(&str, &str)],
    device_size_bytes: u64,
    shards: usize,
) -> Result<(), String> {
    if let Some((field, _)) = ids.iter().find(|(_, value)| parse_id(value).is_none()) {
        return Err(format!("{field} is not 32 hex digits"));
    }
    if shards == 0 || shards > NODE_CORES_MAX {
        return Err(format!("{shards} shards (1 to {NODE_CORES_MAX})"));
    }
    if store_file::region_bytes(device_size_bytes, shards) < NODE_SHARD_BYTES_MIN {
        return Err(format!(
            "a {device_size_bytes}-byte device leaves under {NODE_SHARD_BYTES_MIN} bytes to \
             each of {shards} shards"
        ));
    }
    Ok(())
}

/// Writes a new device file out with zeros (mode 0600), with a progress line on
/// `output.progress`.
pub fn create_device_file(
    path: &Path,
    size: u64,
    output: &mut Output<'_>,
) -> Result<(), StoreFileError> {
    let progress = &mut *output.progress;
    let terminal = output.progress_is_terminal;
    let _ = writeln!(progress, "preallocating {} ({})", path.display(), binary_size(size));
    let started = Instant::now();
    let mut shown = Instant::now();
    store_file::create_zeroed(path, size, &mut |written| {
        if terminal && shown.elapsed() >= PROGRESS_INTERVAL {
            shown = Instant::now();
            let percent = written as f64 * 100.0 / size as f64;
            let _ = write!(progress, "\r  {percent:5.1}% of {}", binary_size(size));
            let _ = progress.flush();
        }
    })?;
    if terminal {
        let _ = write!(progress, "\r\x1b[2K");
    }
    let _ = writeln!(progress, "preallocated in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// `bytes` in binary units, as a user wrote them: "2 GiB", "96 MiB", "1.5 GiB".
pub fn binary_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 {
        format!("{value} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeError::Listen { what, addr, source }
                if source.kind() == io::ErrorKind::AddrInUse =>
            {
                write!(
                    f,
                    "{what} {addr}: the address is in use (another kiseki-server?); stop it or \
                     give another {what}"
                )
            }
            NodeError::Listen { what, addr, source } => {
                write!(f, "{what} {addr}: cannot listen there: {source}")
            }
            NodeError::Metadata { reason } => write!(f, "metadata, keys or S3: {reason}"),
            NodeError::RootKeyMissing { path } => write!(
                f,
                "{} is missing: every node of a cluster holds the cluster's root key; copy it \
                 (mode 0600) from the node started with init, then start this one again",
                path.display()
            ),
            NodeError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            NodeError::Tls(error) => write!(f, "TLS: {error}"),
            NodeError::Engine { device, source } => {
                write!(f, "the engine on {}: {source}", device.display())
            }
            NodeError::Fabric(error) => write!(f, "the fabric server: {error}"),
            NodeError::Runtime(error) => write!(f, "runtime: {error}"),
            NodeError::Output(error) => write!(f, "cannot write output: {error}"),
        }
    }
}

impl std::error::Error for NodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            NodeError::Listen { source, .. } | NodeError::Io { source, .. } => Some(source),
            NodeError::Tls(error) => Some(error),
            NodeError::Engine { source, .. } => Some(source),
            NodeError::Fabric(error) => Some(error),
            NodeError::Runtime(error) | NodeError::Output(error) => Some(error),
            NodeError::Metadata { .. } | NodeError::RootKeyMissing { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_hex_and_bad_ones_are_refused() {
        let hex = random_id().unwrap();
        let id = parse_id(&hex).unwrap();
        assert_eq!(crate::hex::encode(&id), hex);
        assert_ne!(random_id().unwrap(), hex, "random ids differ");
        assert!(parse_id(&hex[..30]).is_none());
        assert!(parse_id(&"g".repeat(32)).is_none());
        assert!(parse_id(&"é".repeat(16)).is_none());
    }

    #[test]
    fn a_held_lock_is_in_use_until_dropped() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("lock");
        let held = lock_data_dir(&path).unwrap();
        assert!(matches!(lock_data_dir(&path), Err(LockError::InUse)));
        drop(held);
        assert!(lock_data_dir(&path).is_ok());
    }

    #[test]
    fn sizes_read_in_binary_units() {
        assert_eq!(binary_size(2 << 30), "2 GiB");
        assert_eq!(binary_size(96 << 20), "96 MiB");
        assert_eq!(binary_size(3 << 29), "1.5 GiB");
        assert_eq!(binary_size(100), "100 bytes");
    }
}
