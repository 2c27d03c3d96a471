//! `kiseki-server run`: a node from a checked configuration ([`crate::config`]), on the
//! shared runner ([`crate::node`]).
//!
//! A start: bind the fabric, admin, S3 and gRPC addresses (first, so that a port in use is
//! refused before anything is made), build the TLS context from the configured files (the
//! CRL re-read while the node runs), open the data dir ([`data_dir`]), then the device:
//!
//! - a first start (no manifest) takes `device_path` as it is (a block device, or a file
//!   that exists) or makes the file with `device_size` (zeroed, 0600); it refuses a device
//!   that already holds a Kiseki superblock (another cluster's, or a store this data dir has
//!   no record of), records the device in the manifest, formats one shard per reactor, and
//!   marks the manifest formatted;
//! - a later start checks that the configuration still names that device, its size, its
//!   shard count, the cluster's CA and this node's id, and opens the shards without
//!   formatting (an engine that finds another cluster's superblock refuses it).
//!
//! The cluster's id, which every superblock carries, is the first half of the CA
//! certificate's KES identity (SHA-256 of its public key): every node of a cluster derives
//! the same id, and a device formatted under another CA is another cluster's.
//!
//! Then the runner starts the metadata (a one-member group without peers; with peers this
//! node's member of the cluster's groups, its Raft RPCs on the fabric address; `init` makes
//! the first voters and the cluster's root key), the key manager, the S3 and gRPC front ends
//! with `chunk_size` applied to the object layer, and the admin server; prints a short summary
//! and the ready line; and serves until SIGINT or SIGTERM.
//!
//! What it does not do: create tenants or S3 keys, or print a secret (the `tenant` and
//! `s3-credentials create` admin subcommands make them, with the node stopped); forward a
//! follower's S3 or gRPC requests to the leader. (Object chunks are replicated in a cluster:
//! `crate::node` gives the object layer the members' chunk services, `crate::chunks`.)
//!
//! Exit codes (`crate::cli`): 2 when the configuration cannot work ([`RunError::is_usage`]),
//! 1 for the rest, 0 after a clean stop.

mod data_dir;

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use kiseki_engine::store_file::{self, FileStore, FormatPolicy, StoreFileError};
use kiseki_engine::{DecodeError, EngineError, format::Superblock};
use kiseki_security::authz::RoleFiles;
use kiseki_security::keymanager::root_key_path;
use kiseki_security::{KesIdentity, PkiError, TlsBuilder, TlsContext, TlsPaths, read_certificates};

use crate::config::CheckedConfig;
use crate::constants::{NODE_SHARD_BYTES_MIN, NODE_SUPERBLOCK_PROBE_BYTES};
use crate::node::{
    self, MemberSpec, MetadataSpec, Node, NodeError, NodeListeners, NodeSpec, Output, RootKey,
    binary_size,
};
use crate::objects::ObjectConfig;
use data_dir::{FormatState, Manifest, NodeDir};

/// Device sizes are used in whole MiB, as every shard's region is (see `store_file`).
const MIB: u64 = 1 << 20;

/// Why a configured node did not start, or did not stop cleanly.
#[derive(Debug)]
#[non_exhaustive]
pub enum RunError {
    /// The configuration cannot work with what the node finds (exit code 2): the field to
    /// change, and why.
    Config {
        field: &'static str,
        reason: String,
    },
    /// Another process uses the data dir.
    InUse {
        path: PathBuf,
    },
    /// The manifest cannot be read as a configured node's of this build.
    Manifest {
        path: PathBuf,
        reason: String,
    },
    /// The device belongs to another cluster, or holds a store this data dir did not make.
    OtherCluster {
        device: PathBuf,
        reason: String,
    },
    /// This node's device (made on its first start) is gone.
    DeviceMissing {
        device: PathBuf,
    },
    Io {
        path: PathBuf,
        source: io::Error,
    },
    /// Making the device file failed.
    Store(StoreFileError),
    /// The runner: an address, the engine, the metadata, the front ends.
    Node(NodeError),
}

/// What a start found or made on the device, for the runner and the summary.
struct Device {
    store: FileStore,
    policy: FormatPolicy,
    /// The manifest to mark formatted once the engine runs; `None` on a formatted node.
    to_commit: Option<Manifest>,
}

/// Runs a node from `config` until SIGINT or SIGTERM; see the module's notes.
pub fn run(config: &CheckedConfig, output: &mut Output<'_>) -> Result<(), RunError> {
    let fabric = node::bind("fabric_addr", config.fabric_addr)?;
    let admin = node::bind("admin_addr", config.admin_addr)?;
    let s3 = node::bind("s3_addr", config.s3_addr)?;
    let grpc = node::bind("grpc_addr", config.grpc_addr)?;
    let tls = tls_context(config)?;
    let role_files = role_files(config)?;
    let cluster_id = cluster_id(&config.config.ca_path)?;
    let mut dir = NodeDir::open(&config.config.data_dir)?;
    // Refused before the device is touched; the runner would refuse it after.
    let root_key = root_key_policy(config);
    let root_path = root_key_path(&dir.meta());
    if root_key == RootKey::MustExist && !root_path.exists() {
        return Err(RunError::Node(NodeError::RootKeyMissing { path: root_path }));
    }
    let device = prepare_device(config, &mut dir, &cluster_id, output)?;
    let first_start = device.to_commit.is_some();
    let (engine, chunks) = node::start_engine(&device.store, device.policy)
        .map_err(|source| engine_error(&device.store.path, source))?;
    if let Some(mut manifest) = device.to_commit {
        manifest.state = FormatState::Formatted;
        if let Err(error) = dir.write(manifest) {
            let _ = engine.shutdown();
            return Err(error);
        }
    }
    let spec = NodeSpec {
        tls,
        meta_dir: dir.meta(),
        device_path: device.store.path.clone(),
        metadata: metadata_spec(config),
        listeners: NodeListeners { fabric, admin, s3, grpc },
        objects: object_config(config),
        role_files,
        s3_domains: Vec::new(),
        root_key,
    };
    let node = Node::start(spec, engine)?;
    let state = if first_start {
        "first start: device formatted".to_owned()
    } else {
        format!("reused; {chunks} chunk(s) recovered")
    };
    if let Err(error) = summary(config, &dir, &device.store, &node, &state, output.out) {
        let _ = node.stop();
        return Err(RunError::Node(NodeError::Output(error)));
    }
    node.serve(output.out)?;
    // The data dir's lock is held until here.
    drop(dir);
    Ok(())
}

/// The node's TLS context from the configured files; a file that does not read is the
/// configuration's fault.
fn tls_context(config: &CheckedConfig) -> Result<TlsContext, RunError> {
    let c = &config.config;
    let paths = TlsPaths {
        ca: c.ca_path.clone(),
        cert: c.cert_path.clone(),
        key: c.key_path.clone(),
        crl: c.crl_path.clone(),
    };
    TlsBuilder::new(paths).build().map_err(|error| tls_error(&error))
}

/// The authorizers' role files, when the configuration names them.
fn role_files(config: &CheckedConfig) -> Result<RoleFiles, RunError> {
    let (Some(policy), Some(scope)) = (&config.config.policy_file, &config.config.scope_file)
    else {
        return Ok(RoleFiles::default());
    };
    let read = |field, path: &Path| {
        fs::read(path).map_err(|error| RunError::Config {
            field,
            reason: format!("{}: {error}", path.display()),
        })
    };
    RoleFiles::parse(&read("policy_file", policy)?, &read("scope_file", scope)?).map_err(|error| {
        RunError::Config { field: "policy_file, scope_file", reason: error.to_string() }
    })
}

/// The cluster's id: the first 16 bytes of the CA certificate's KES identity, as hex.
fn cluster_id(ca_path: &Path) -> Result<String, RunError> {
    let certs = read_certificates(ca_path).map_err(|error| tls_error(&error))?;
    let identity = KesIdentity::of_certificate(&certs[0]).ok_or_else(|| RunError::Config {
        field: "ca_path",
        reason: format!("{}: not an X.509 certificate", ca_path.display()),
    })?;
    Ok(crate::hex::encode(&identity.as_bytes()[..16]))
}

fn tls_error(error: &PkiError) -> RunError {
    RunError::Config {
        field: "ca_path, cert_path, key_path or crl_path",
        reason: error.to_string(),
    }
}

/// Decides what the engine starts on; see the module's notes.
fn prepare_device(
    config: &CheckedConfig,
    dir: &mut NodeDir,
    cluster_id: &str,
    output: &mut Output<'_>,
) -> Result<Device, RunError> {
    let manifest = match dir.manifest.clone() {
        Some(manifest) => {
            check_later_start(config, &manifest, cluster_id)?;
            manifest
        }
        None => first_start(config, dir, cluster_id, output)?,
    };
    let formatting = manifest.state == FormatState::Formatting;
    let store = FileStore {
        path: manifest.device_path.clone(),
        regions: manifest.shards,
        region_bytes: store_file::region_bytes(manifest.device_size_bytes, manifest.shards),
        ids: manifest.device_ids(),
        device: node::device_options(),
    };
    Ok(Device {
        store,
        policy: if formatting { FormatPolicy::All } else { FormatPolicy::None },
        to_commit: formatting.then_some(manifest),
    })
}

/// A later start: the configuration must name what the node was made with.
fn check_later_start(
    config: &CheckedConfig,
    manifest: &Manifest,
    cluster_id: &str,
) -> Result<(), RunError> {
    let device = &manifest.device_path;
    if manifest.cluster_id != cluster_id {
        return Err(RunError::Config {
            field: "ca_path",
            reason: format!(
                "{} is the CA of cluster {cluster_id}, but this node and its device belong to \
                 cluster {}; give the CA the node was made with",
                config.config.ca_path.display(),
                manifest.cluster_id
            ),
        });
    }
    if manifest.metadata_node_id != config.config.node_id {
        return Err(RunError::Config {
            field: "node_id",
            reason: format!(
                "{}: this data dir is node {}'s (its metadata store votes as that node)",
                config.config.node_id, manifest.metadata_node_id
            ),
        });
    }
    match fs::canonicalize(&config.config.device_path) {
        Ok(path) if &path == device => {}
        Ok(_) => {
            return Err(RunError::Config {
                field: "device_path",
                reason: format!(
                    "{}: this node's device is {}; a node does not move to another device",
                    config.config.device_path.display(),
                    device.display()
                ),
            });
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Err(RunError::DeviceMissing { device: device.clone() });
        }
        Err(source) => {
            return Err(RunError::Io { path: config.config.device_path.clone(), source });
        }
    }
    if let Some(cores) = config.config.cores
        && cores != manifest.shards
    {
        return Err(RunError::Config {
            field: "cores",
            reason: format!(
                "{cores}: {} was formatted with {} shard(s), one per reactor, and a node does \
                 not reshard (remove cores, or set it to {})",
                device.display(),
                manifest.shards,
                manifest.shards
            ),
        });
    }
    if let Some(size) = config.device_size_bytes
        && size.next_multiple_of(MIB) != manifest.device_size_bytes
    {
        return Err(RunError::Config {
            field: "device_size",
            reason: format!(
                "{}: {} was made with {}, which a node neither grows nor shrinks",
                binary_size(size),
                device.display(),
                binary_size(manifest.device_size_bytes)
            ),
        });
    }
    let size = device_size(device)?;
    if size != manifest.device_size_bytes {
        return Err(RunError::OtherCluster {
            device: device.clone(),
            reason: format!(
                "it holds {}, not the {} of this node's device",
                binary_size(size),
                binary_size(manifest.device_size_bytes)
            ),
        });
    }
    Ok(())
}

/// A first start: checks the device (or makes the file) and records it, formatting.
fn first_start(
    config: &CheckedConfig,
    dir: &mut NodeDir,
    cluster_id: &str,
    output: &mut Output<'_>,
) -> Result<Manifest, RunError> {
    let path = &config.config.device_path;
    let existing = match fs::metadata(path) {
        Ok(_) => Some(existing_size(config, path)?),
        Err(error) if error.kind() == io::ErrorKind::NotFound => None,
        Err(source) => return Err(RunError::Io { path: path.clone(), source }),
    };
    // The config check made sure a missing device comes with a size to make it.
    let size = match existing {
        Some(size) => size,
        None => config.device_size_bytes.unwrap_or_default().next_multiple_of(MIB),
    };
    let shards = config.config.cores.unwrap_or_else(|| node::default_shards(size));
    if store_file::region_bytes(size, shards) < NODE_SHARD_BYTES_MIN {
        return Err(RunError::Config {
            field: "device_size",
            reason: format!(
                "{} is too small for {shards} shard(s): each needs at least {} (a device of \
                 {} or more, or fewer cores)",
                binary_size(size),
                binary_size(NODE_SHARD_BYTES_MIN),
                binary_size(NODE_SHARD_BYTES_MIN * shards as u64)
            ),
        });
    }
    if existing.is_some() {
        refuse_a_kiseki_device(path, cluster_id)?;
    } else {
        node::create_device_file(path, size, output).map_err(RunError::Store)?;
    }
    let device_path =
        fs::canonicalize(path).map_err(|source| RunError::Io { path: path.clone(), source })?;
    let random =
        || node::random_id().map_err(|source| RunError::Io { path: "/dev/urandom".into(), source });
    let (device_node_id, device_id) = (random()?, random()?);
    let manifest = Manifest::formatting(
        (cluster_id, &device_node_id, &device_id),
        config.config.node_id,
        device_path,
        size,
        shards,
    );
    dir.write(manifest.clone())?;
    Ok(manifest)
}

/// The size of a device found on a first start, in whole MiB; a `device_size` given must be
/// that size (a node takes a device as it is).
fn existing_size(config: &CheckedConfig, path: &Path) -> Result<u64, RunError> {
    let metadata =
        fs::metadata(path).map_err(|source| RunError::Io { path: path.to_owned(), source })?;
    let kind = metadata.file_type();
    if !kind.is_file() && !kind.is_block_device() {
        return Err(RunError::Config {
            field: "device_path",
            reason: format!("{}: neither a regular file nor a block device", path.display()),
        });
    }
    let size = device_size(path)?;
    if let Some(wanted) = config.device_size_bytes
        && wanted.next_multiple_of(MIB) != size
    {
        return Err(RunError::Config {
            field: "device_size",
            reason: format!(
                "{}: {} exists with {}, and a node takes a device as it is (remove \
                 device_size, or the file)",
                binary_size(wanted),
                path.display(),
                binary_size(size)
            ),
        });
    }
    Ok(size)
}

/// The whole MiB of a file or block device (a block device's size is where its end seeks
/// to); a partial MiB at the end is not used.
fn device_size(path: &Path) -> Result<u64, RunError> {
    let io = |source| RunError::Io { path: path.to_owned(), source };
    let bytes =
        File::open(path).and_then(|mut file| file.seek(io::SeekFrom::End(0))).map_err(io)?;
    Ok(bytes / MIB * MIB)
}

/// Refuses a device whose first block holds a Kiseki superblock: a first start never
/// formats a store, whoever's it is.
fn refuse_a_kiseki_device(path: &Path, cluster_id: &str) -> Result<(), RunError> {
    let mut bytes = Vec::with_capacity(NODE_SUPERBLOCK_PROBE_BYTES);
    File::open(path)
        .and_then(|file| file.take(NODE_SUPERBLOCK_PROBE_BYTES as u64).read_to_end(&mut bytes))
        .map_err(|source| RunError::Io { path: path.to_owned(), source })?;
    let refused = |reason: String| RunError::OtherCluster { device: path.to_owned(), reason };
    match Superblock::decode(&bytes) {
        Err(DecodeError::BadMagic | DecodeError::Truncated { .. }) => Ok(()),
        Ok(superblock) => {
            let found = crate::hex::encode(&superblock.ids.cluster_id);
            if found == cluster_id {
                Err(refused(format!(
                    "it holds a Kiseki store of this cluster (device node {}) that this data \
                     dir has no record of; a first start does not format a store: give the \
                     data_dir it was made with, or wipe its first 4 KiB to reuse it",
                    crate::hex::encode(&superblock.ids.node_id)
                )))
            } else {
                Err(refused(format!(
                    "it belongs to cluster {found}, not to this node's cluster {cluster_id} \
                     (from its CA); give another device_path"
                )))
            }
        }
        Err(error) => Err(refused(format!(
            "it holds a Kiseki superblock that does not read ({error}); a first start does not \
             format it: wipe its first 4 KiB to reuse it"
        ))),
    }
}

fn metadata_spec(config: &CheckedConfig) -> MetadataSpec {
    if config.peers.is_empty() {
        return MetadataSpec::Single;
    }
    MetadataSpec::Member(MemberSpec {
        node_id: config.config.node_id,
        advertise: config.fabric_addr,
        peers: config.peers.clone(),
        init: config.config.init,
    })
}

/// A single node, or the node that starts a cluster, makes the root key; any other member
/// must be given the cluster's.
fn root_key_policy(config: &CheckedConfig) -> RootKey {
    if config.peers.is_empty() || config.config.init {
        RootKey::CreateIfMissing
    } else {
        RootKey::MustExist
    }
}

fn object_config(config: &CheckedConfig) -> ObjectConfig {
    let mut objects = ObjectConfig::default();
    if let Some(chunk) = config.chunk_size_bytes {
        // Checked against RUN_CHUNK_SIZE_MAX_BYTES (4 MiB less 64 KiB) by the config check.
        objects.chunk_size_bytes = usize::try_from(chunk).unwrap_or(usize::MAX);
    }
    objects
}

fn engine_error(device: &Path, source: EngineError) -> RunError {
    match source {
        EngineError::WrongCluster { expected, found } => RunError::OtherCluster {
            device: device.to_owned(),
            reason: format!(
                "it belongs to cluster {}, not to this node's cluster {}",
                crate::hex::encode(&found),
                crate::hex::encode(&expected)
            ),
        },
        source => RunError::Node(NodeError::Engine { device: device.to_owned(), source }),
    }
}

fn summary(
    config: &CheckedConfig,
    dir: &NodeDir,
    store: &FileStore,
    node: &Node,
    state: &str,
    out: &mut dyn Write,
) -> io::Result<()> {
    let addrs = node.addrs();
    let chunk = object_config(config).chunk_size_bytes as u64;
    node::warn_mlock_failures(node.mlock_failures(), out)?;
    let lines = [
        format!("kiseki-server run: node {} ({state})", config.config.node_id),
        format!("  data dir:    {}", dir.root().display()),
        format!(
            "  device:      {} ({}, {} shard(s), one reactor each; objects in {} chunks)",
            store.path.display(),
            binary_size(store.region_bytes * store.regions as u64),
            store.regions,
            binary_size(chunk)
        ),
        format!("  metadata:    {}", node.metadata_summary()),
        format!(
            "  fabric:      {} (chunks and Raft RPCs; TCP, TLS 1.3, client certificates of \
             the cluster CA)",
            addrs.fabric
        ),
        format!("  S3:          https://{} (TLS 1.3, SigV4; path style)", addrs.s3),
        format!("  gRPC:        {} (TLS 1.3, client certificates of the cluster CA)", addrs.grpc),
        format!("  admin:       http://{} (GET /metrics, /healthz, /readyz)", addrs.admin),
        "  S3 keys:     `kiseki-server s3-credentials create` on the stopped node's data dir \
         (no key is made or printed here)"
            .to_owned(),
    ];
    for line in lines {
        writeln!(out, "{line}")?;
    }
    out.flush()
}

impl RunError {
    /// Whether the configuration is at fault (exit code 2) rather than the system.
    pub fn is_usage(&self) -> bool {
        matches!(self, RunError::Config { .. })
    }
}

impl From<NodeError> for RunError {
    fn from(error: NodeError) -> RunError {
        RunError::Node(error)
    }
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Config { field, reason } => write!(f, "configuration: {field}: {reason}"),
            RunError::InUse { path } => write!(
                f,
                "{} is in use by another kiseki-server (it holds meta/lock); stop it or give \
                 another data_dir",
                path.display()
            ),
            RunError::Manifest { path, reason } => {
                write!(f, "{}: not a manifest this build reads: {reason}", path.display())
            }
            RunError::OtherCluster { device, reason } => {
                write!(f, "device_path {} is refused: {reason}", device.display())
            }
            RunError::DeviceMissing { device } => write!(
                f,
                "device_path {} is missing: it is this node's device, with its chunks; restore \
                 it (a node never makes a new device after its first start)",
                device.display()
            ),
            RunError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            RunError::Store(error) => write!(f, "making the device file: {error}"),
            RunError::Node(error) => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for RunError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RunError::Io { source, .. } => Some(source),
            RunError::Store(error) => Some(error),
            RunError::Node(error) => Some(error),
            _ => None,
        }
    }
}
