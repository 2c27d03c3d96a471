//! `kiseki-server dev`: one node on embedded defaults, on the node runner ([`crate::node`]):
//! the engine (one pinned reactor and shard per core on a preallocated device file), the
//! fabric's chunk service over TCP with TLS 1.3 and mutual authentication, a one-member
//! metadata group with the key manager, the S3 and gRPC front ends, and Prometheus metrics
//! with health probes on the admin address ([`crate::observe`]).
//!
//! A start: bind the fabric, admin, S3 and gRPC addresses (first, so that a port in use is
//! refused before anything is made), open or make the data dir ([`data_dir`]), build the
//! node's TLS context, on a first start write the device file out and format the shards,
//! start the engine (recovering every shard), hand it to the runner, make or find the dev
//! tenant and its S3 key ([`tenant`]), print what a user needs (the key's secret included:
//! it is a development node), and serve until SIGINT or SIGTERM. Then the runner stops:
//! stop accepting, let requests already read finish (the fabric's shutdown grace), stop the
//! engine (each reactor completes what it accepted; every acknowledged put is already
//! durable), return `Ok`.
//!
//! What it does not do: renew certificates, or keep the fabric chunk service's tenant
//! references across restarts (that service stores envelopes its clients sealed and holds
//! their references in memory: after a restart a tenant sees none of the chunks it put
//! there, a node identity sees all). Objects written through S3 or gRPC are sealed by the
//! node and their manifests kept in the metadata group, so they survive restarts.
//!
//! Output: what a user reads goes to `out` (stdout); progress of the slow first-start step
//! to `progress` (stderr); warnings of the fabric go to the log. No key material anywhere
//! but the dev key's secret, printed on purpose.

mod data_dir;
mod tenant;

use std::fmt;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use kiseki_engine::store_file::{self, FileStore, FormatPolicy, StoreFileError};
use kiseki_engine::{Engine, EngineError};
use kiseki_security::{PkiError, TlsBuilder, TlsContext};

use crate::constants::{
    DEV_DEVICE_SIZE_DEFAULT_BYTES, DEV_S3_DOMAIN, DEV_TENANT_ORG, NODE_SHARD_BYTES_MIN,
};
use crate::node::{
    self, MetadataSpec, Node, NodeError, NodeListeners, NodeSpec, RootKey, create_device_file,
};
use crate::objects::ObjectConfig;
use data_dir::{DataDir, Layout, NODE_CLIENT, Plan};
use tenant::DevKey;

pub use crate::node::{Output, binary_size};

/// The device file of the dev node whose data dir is `data_dir`.
pub(crate) fn device_path(data_dir: &std::path::Path) -> PathBuf {
    Layout::new(data_dir.to_owned()).device()
}

/// Device sizes are whole MiB, so every shard's region is (see `store_file`).
const MIB: u64 = 1 << 20;

/// The working set the printed bench commands put and get: 64 MiB of 1 MiB chunks, or a
/// quarter of a smaller device.
const BENCH_WORKING_SET_MAX_BYTES: u64 = 64 << 20;

/// A dev node's settings, from the command line.
#[derive(Debug, Clone)]
pub struct DevConfig {
    pub data_dir: PathBuf,
    /// `None`: the data dir's size, or the default on a first start.
    pub device_size_bytes: Option<u64>,
    pub fabric_addr: SocketAddr,
    /// Where metrics and health are served (plain HTTP).
    pub admin_addr: SocketAddr,
    /// Where the S3 front end listens (HTTPS).
    pub s3_addr: SocketAddr,
    /// Where the gRPC front end listens (HTTP/2 over TLS, client certificates required).
    pub grpc_addr: SocketAddr,
    /// Reactors (and shards); `None`: the data dir's count, or one per core less one.
    pub cores: Option<usize>,
}

/// Why a dev node did not start, or did not stop cleanly.
#[derive(Debug)]
#[non_exhaustive]
pub enum DevError {
    /// A flag's value cannot work, alone or with the data dir.
    Usage(String),
    /// The node runner failed: a listener (named by its flag), the engine, the fabric, the
    /// metadata, the key manager or a front end, the runtime, or writing the output.
    Node(NodeError),
    /// Another process uses the data dir.
    InUse {
        path: PathBuf,
    },
    /// The path is not a directory a dev node may make or use.
    Foreign {
        path: PathBuf,
        reason: &'static str,
    },
    /// Kiseki's layout without a manifest: a first start that did not finish.
    HalfMade {
        path: PathBuf,
        missing: PathBuf,
    },
    /// A made node with a file missing.
    Damaged {
        path: PathBuf,
        missing: PathBuf,
    },
    /// The data dir, its CA, certificate or device belong to another cluster or node.
    OtherCluster {
        path: PathBuf,
        reason: String,
    },
    /// The manifest cannot be read as this build's.
    Manifest {
        path: PathBuf,
        reason: String,
    },
    Io {
        path: PathBuf,
        source: io::Error,
    },
    Pki(PkiError),
    /// Creating the device file failed.
    Store(StoreFileError),
}

/// What a start found or made, for the summary.
struct Started {
    dir: DataDir,
    engine: Engine,
    chunks: u64,
    tls: TlsContext,
}

/// Runs a dev node until SIGINT or SIGTERM; see the module's notes.
pub fn run(config: &DevConfig, output: &mut Output<'_>) -> Result<(), DevError> {
    let fabric = node::bind("--fabric-addr", config.fabric_addr)?;
    let fabric_addr = fabric.local_addr().map_err(|e| DevError::Node(NodeError::Runtime(e)))?;
    let admin = node::bind("--admin-addr", config.admin_addr)?;
    let s3 = node::bind("--s3-addr", config.s3_addr)?;
    let grpc = node::bind("--grpc-addr", config.grpc_addr)?;
    let Started { dir, engine, chunks, tls } = start(config, fabric_addr, output)?;
    let meta = dir.layout.root().join("meta");
    let spec = NodeSpec {
        tls,
        meta_dir: meta.clone(),
        device_path: dir.layout.device(),
        metadata: MetadataSpec::Single,
        listeners: NodeListeners { fabric, admin, s3, grpc },
        objects: ObjectConfig::default(),
        role_files: match tenant::role_files() {
            Ok(files) => files,
            Err(error) => {
                let _ = engine.shutdown();
                return Err(error);
            }
        },
        s3_domains: vec![DEV_S3_DOMAIN.to_owned()],
        root_key: RootKey::CreateIfMissing,
    };
    let node = Node::start(spec, engine)?;
    let key = node.block_on(tenant::dev_tenant(&meta, &node));
    let printed = key.and_then(|key| summary(&dir, chunks, &node, &key, output.out));
    if let Err(error) = printed {
        let _ = node.stop();
        return Err(error);
    }
    node.serve(output.out)?;
    // The data dir's lock is held until here.
    drop(dir);
    Ok(())
}

/// The data dir, TLS, the device and the engine.
fn start(
    config: &DevConfig,
    fabric_addr: SocketAddr,
    output: &mut Output<'_>,
) -> Result<Started, DevError> {
    let layout = Layout::new(config.data_dir.clone());
    let (dir, rollback) =
        DataDir::open_or_begin(layout, || first_start_plan(config, fabric_addr.ip()))?;
    let dir = absolute(dir)?;
    if !dir.created {
        check_flags(config, &dir)?;
    }
    let layout = &dir.layout;
    let tls = TlsBuilder::new(layout.server_tls()).build()?;
    let manifest = &dir.manifest;
    if dir.created {
        create_device_file(&layout.device(), manifest.device_size_bytes, output)
            .map_err(DevError::Store)?;
    }
    let store = FileStore {
        path: layout.device(),
        regions: manifest.shards,
        region_bytes: store_file::region_bytes(manifest.device_size_bytes, manifest.shards),
        ids: dir.device_ids(),
        device: node::device_options(),
    };
    let policy = if dir.created { FormatPolicy::All } else { FormatPolicy::None };
    let (engine, chunks) =
        node::start_engine(&store, policy).map_err(|source| engine_error(&dir, source))?;
    if let Some(rollback) = rollback
        && let Err(error) = dir.commit(rollback)
    {
        let _ = engine.shutdown();
        return Err(error);
    }
    warn_unnamed_address(&dir, fabric_addr, output);
    Ok(Started { dir, engine, chunks, tls })
}

/// What a first start makes: the device size and shard count from the flags or the
/// defaults, checked against each other.
fn first_start_plan(config: &DevConfig, fabric_ip: IpAddr) -> Result<Plan, DevError> {
    let size = config.device_size_bytes.unwrap_or(DEV_DEVICE_SIZE_DEFAULT_BYTES);
    let size = size.next_multiple_of(MIB);
    let shards = config.cores.unwrap_or_else(|| node::default_shards(size));
    let needed = NODE_SHARD_BYTES_MIN * shards as u64;
    if store_file::region_bytes(size, shards) < NODE_SHARD_BYTES_MIN {
        return Err(DevError::Usage(format!(
            "--device-size {} is too small: each of {shards} shard(s) needs at least {} \
             (give --device-size {} or more, or fewer --cores)",
            binary_size(size),
            binary_size(NODE_SHARD_BYTES_MIN),
            binary_size(needed)
        )));
    }
    Ok(Plan { device_size_bytes: size, shards, fabric_ip })
}

/// A later start: flags given must agree with what the data dir was made with (the device
/// is neither grown nor resharded).
fn check_flags(config: &DevConfig, dir: &DataDir) -> Result<(), DevError> {
    let manifest = &dir.manifest;
    let root = dir.layout.root().display();
    if let Some(size) = config.device_size_bytes
        && size.next_multiple_of(MIB) != manifest.device_size_bytes
    {
        return Err(DevError::Usage(format!(
            "--device-size {}: {root} was made with a {} device, which a dev node neither \
             grows nor shrinks (omit the flag, or give a new --data-dir)",
            binary_size(size),
            binary_size(manifest.device_size_bytes)
        )));
    }
    if let Some(cores) = config.cores
        && cores != manifest.shards
    {
        return Err(DevError::Usage(format!(
            "--cores {cores}: {root} was made with {} shard(s), one per reactor, and a dev \
             node does not reshard (omit the flag, or give a new --data-dir)",
            manifest.shards
        )));
    }
    Ok(())
}

/// The data dir with an absolute root, so that printed paths work from anywhere.
fn absolute(mut dir: DataDir) -> Result<DataDir, DevError> {
    let root = dir.layout.root().to_owned();
    let canonical =
        std::fs::canonicalize(&root).map_err(|source| DevError::Io { path: root, source })?;
    dir.layout = Layout::new(canonical);
    Ok(dir)
}

/// A later start on an address the node certificate does not name: clients that connect
/// to it and check the name will fail, so say it before they do.
fn warn_unnamed_address(dir: &DataDir, addr: SocketAddr, output: &mut Output<'_>) {
    let ip = addr.ip();
    if ip.is_loopback() || ip.is_unspecified() {
        return;
    }
    if !dir.manifest.server_names.iter().any(|name| name == &ip.to_string()) {
        let _ = writeln!(
            output.progress,
            "warning: the node certificate names {} only; clients that connect to {ip} will \
             refuse it",
            dir.manifest.server_names.join(", ")
        );
    }
}

fn summary(
    dir: &DataDir,
    chunks: u64,
    node: &Node,
    key: &DevKey,
    out: &mut dyn Write,
) -> Result<(), DevError> {
    let addrs = node.addrs();
    let (fabric_addr, admin_addr) = (addrs.fabric, addrs.admin);
    let layout = &dir.layout;
    let manifest = &dir.manifest;
    let connect = connect_addr(fabric_addr);
    let node_client = layout.client_dir(NODE_CLIENT);
    let tenant_client = layout.tenant_client_dir();
    let state = if dir.created {
        "made on this start".to_owned()
    } else {
        format!("reused; {chunks} chunk(s) recovered")
    };
    let working_set =
        (manifest.device_size_bytes / 4 / MIB * MIB).clamp(MIB, BENCH_WORKING_SET_MAX_BYTES);
    let lines = [
        format!("kiseki-server dev: one node on embedded defaults ({state})"),
        format!("  data dir:    {}", layout.root().display()),
        format!("  CA bundle:   {}", layout.ca_cert().display()),
        format!(
            "  device:      {} ({}, {} shard(s), one reactor each)",
            layout.device().display(),
            binary_size(manifest.device_size_bytes),
            manifest.shards
        ),
        format!(
            "  fabric:      {fabric_addr} (chunk service; TCP, TLS 1.3, client certificates \
             of this CA only)"
        ),
        format!("  admin:       http://{admin_addr} (GET /metrics: Prometheus; /healthz, /readyz)"),
        format!(
            "  S3:          https://{} (tenant org {DEV_TENANT_ORG}; TLS 1.3, SigV4)",
            connect_addr(addrs.s3)
        ),
        format!("  access key:  {}", key.access_key),
        format!("  secret key:  {}", key.secret.as_str()),
        format!(
            "  identities:  {} (server role: node-to-node calls, kiseki-bench)",
            node_client.display()
        ),
        format!(
            "               {} (tenant org {DEV_TENANT_ORG}: sees only chunks it put since \
             this start)",
            tenant_client.display()
        ),
        "Put chunks, then get them back (from the repository root):".to_owned(),
        bench_command(connect, &node_client, "put", working_set),
        bench_command(connect, &node_client, "get", working_set),
        "List the tenant's buckets with the AWS CLI:".to_owned(),
        format!(
            "  AWS_ACCESS_KEY_ID={} AWS_SECRET_ACCESS_KEY={} AWS_DEFAULT_REGION=us-east-1 \
             aws --endpoint-url https://{} --ca-bundle {} s3 ls",
            key.access_key,
            key.secret.as_str(),
            connect_addr(addrs.s3),
            layout.ca_cert().display()
        ),
        format!(
            "  gRPC:        {} (TLS 1.3, client certificates of this CA; the role comes from \
             the certificate; health and reflection on)",
            connect_addr(addrs.grpc)
        ),
        "Call gRPC with grpcurl as the tenant's workload (on a dev node also its admin), e.g. \
         list the services, then the tenant's buckets:"
            .to_owned(),
        grpcurl_command(layout, &tenant_client, addrs.grpc, "list"),
        grpcurl_command(
            layout,
            &tenant_client,
            addrs.grpc,
            "kiseki.data.v1.DataService/ListBuckets",
        ),
    ];
    let output = |error| DevError::Node(NodeError::Output(error));
    node::warn_mlock_failures(node.mlock_failures(), out).map_err(output)?;
    for line in lines {
        writeln!(out, "{line}").map_err(output)?;
    }
    out.flush().map_err(output)
}

fn grpcurl_command(
    layout: &Layout,
    client: &std::path::Path,
    addr: SocketAddr,
    call: &str,
) -> String {
    let client = Layout::client_tls(client);
    format!(
        "  grpcurl -cacert {} -cert {} -key {} {} {call}",
        layout.ca_cert().display(),
        client.cert.display(),
        client.key.display(),
        connect_addr(addr)
    )
}

fn bench_command(connect: SocketAddr, tls_dir: &std::path::Path, rw: &str, size: u64) -> String {
    format!(
        "  cargo run --release -p kiseki-bench -- fabric --connect {connect} --tls-dir {} \
         --rw={rw} --bs=1M --size={}M --iodepth=4",
        tls_dir.display(),
        size / MIB
    )
}

/// Where a client on this machine connects: the address itself, or loopback for a
/// wildcard one.
fn connect_addr(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

fn engine_error(dir: &DataDir, source: EngineError) -> DevError {
    let device = dir.layout.device();
    match source {
        EngineError::WrongCluster { expected, found } => DevError::OtherCluster {
            path: dir.layout.root().to_owned(),
            reason: format!(
                "{} belongs to cluster {}, not to this data dir's cluster {}",
                device.display(),
                crate::hex::encode(&found),
                crate::hex::encode(&expected)
            ),
        },
        source => DevError::Node(NodeError::Engine { device, source }),
    }
}

impl DevError {
    /// Whether the command line is at fault (exit code 2) rather than the system.
    pub fn is_usage(&self) -> bool {
        matches!(self, DevError::Usage(_))
    }
}

impl fmt::Display for DevError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DevError::Usage(message) => f.write_str(message),
            DevError::Node(error) => write!(f, "{error}"),
            DevError::InUse { path } => write!(
                f,
                "{} is in use by another kiseki-server (it holds meta/lock); stop it or give \
                 another --data-dir",
                path.display()
            ),
            DevError::Foreign { path, reason } => write!(
                f,
                "{} cannot be a data dir: {reason}; give an empty or new --data-dir",
                path.display()
            ),
            DevError::HalfMade { path, missing } => write!(
                f,
                "{} is a half-made data dir: a first start did not finish ({} is missing); \
                 remove the directory and start again",
                path.display(),
                missing.display()
            ),
            DevError::Damaged { path, missing } => write!(
                f,
                "{} is damaged: {} is missing; restore it, or remove the directory to start \
                 a new node (its chunks are lost)",
                path.display(),
                missing.display()
            ),
            DevError::OtherCluster { path, reason } => write!(
                f,
                "{} does not hold one node of one cluster: {reason}; put back the data dir's \
                 own files, or give another --data-dir",
                path.display()
            ),
            DevError::Manifest { path, reason } => {
                write!(f, "{}: not a manifest this build reads: {reason}", path.display())
            }
            DevError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            DevError::Pki(error) => write!(f, "{error}"),
            DevError::Store(error) => write!(f, "creating the device file: {error}"),
        }
    }
}

impl std::error::Error for DevError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DevError::Io { source, .. } => Some(source),
            DevError::Node(error) => Some(error),
            DevError::Pki(error) => Some(error),
            DevError::Store(error) => Some(error),
            _ => None,
        }
    }
}

impl From<NodeError> for DevError {
    fn from(error: NodeError) -> DevError {
        match error {
            NodeError::Tls(error) => DevError::Pki(error),
            error => DevError::Node(error),
        }
    }
}

impl From<PkiError> for DevError {
    fn from(error: PkiError) -> DevError {
        DevError::Pki(error)
    }
}
