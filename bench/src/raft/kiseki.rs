//! The Kiseki side of `kiseki-bench raft`: metadata nodes started in this process (or
//! running ones reached with --connect) and the put the load generator drives.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kiseki_consensus::command::{Command, DedupMode, ETag, Manifest, ObjectBody, Sealed, TenantId};
use kiseki_consensus::fabric::{FabricRpcTransport, RaftHandler};
use kiseki_consensus::rpc::{RpcLimits, RpcNetworkFactory};
use kiseki_consensus::{ClientError, MetadataClient, MetadataNode, Rejection, ShardId, ShardMap};
use kiseki_fabric::{TcpConfig, TcpServer, TcpServerConfig, TcpTransport};
use kiseki_security::TlsContext;
use openraft::BasicNode;

use super::{PutTarget, RaftArgs};
use crate::fabric::certs::{self, Side};

/// Tenants the keys spread over: each has its own inline-data budget (`kiseki_consensus`'s
/// guard), so the load measures the log, not one tenant's throttle.
const TENANTS: u8 = 16;

/// The bucket a bench tenant writes to: its own name, as bucket names are one namespace
/// across tenants.
fn bucket_of(tenant: &TenantId) -> String {
    format!("bench-{:02x}", tenant.0[15])
}

/// Longest the in-process cluster may take to elect its first leader.
const ELECTION_DEADLINE: Duration = Duration::from_secs(10);

/// Connections the client keeps to each node: the workers' requests multiplex over them.
const CONNECTIONS_PER_NODE: usize = 4;

/// The metadata nodes a run drives.
pub struct Cluster {
    nodes: Vec<(Arc<MetadataNode>, TcpServer)>,
    addrs: Vec<SocketAddr>,
    shards: ShardMap,
    client_tls: TlsContext,
    _dir: Option<tempfile::TempDir>,
}

impl Cluster {
    /// Starts `--nodes` nodes in this process, or reads `--tls-dir` for `--connect`.
    pub async fn start(args: &RaftArgs) -> Result<Cluster, String> {
        if !args.connect.is_empty() {
            let tls_dir = args.tls_dir.as_ref().ok_or("--connect needs --tls-dir")?;
            let client_tls = certs::load(tls_dir, Side::Client)?;
            let shards = ShardMap::new(args.shards).map_err(|e| e.to_string())?;
            return Ok(Cluster {
                nodes: Vec::new(),
                addrs: args.connect.clone(),
                shards,
                client_tls,
                _dir: None,
            });
        }
        let parent = args.directory.clone().unwrap_or_else(std::env::temp_dir);
        let dir = tempfile::Builder::new()
            .prefix("kiseki-bench-raft-")
            .tempdir_in(&parent)
            .map_err(|e| format!("a temporary directory in {}: {e}", parent.display()))?;
        let tls_dir = dir.path().join("tls");
        let server_tls = certs::prepare_server(&tls_dir, [127, 0, 0, 1].into())?;
        let client_tls = certs::load(&tls_dir, Side::Client)?;
        let shards = ShardMap::new(1).map_err(|e| e.to_string())?;
        let mut nodes = Vec::new();
        for id in 1..=u64::from(args.nodes) {
            nodes.push(start_node(id, &dir.path().join(format!("node-{id}")), &server_tls).await?);
        }
        let addrs: Vec<SocketAddr> = nodes.iter().map(|(_, server)| server.local_addr()).collect();
        let members: BTreeMap<u64, BasicNode> =
            (1..).zip(&addrs).map(|(id, addr)| (id, BasicNode::new(addr.to_string()))).collect();
        let first = nodes[0].0.group(ShardId(0)).ok_or("node 1 runs no shard 0")?;
        first.initialize(members).await.map_err(|e| format!("initialize: {e}"))?;
        let cluster = Cluster { nodes, addrs, shards, client_tls, _dir: Some(dir) };
        cluster.await_leader().await?;
        Ok(cluster)
    }

    pub fn describe(&self) -> String {
        let how = if self.nodes.is_empty() { "running" } else { "in-process, fsync'd redb" };
        format!("kiseki ({} node(s), {how}, Raft over mTLS)", self.addrs.len())
    }

    /// A client over the fabric, with the bench tenants and their buckets in place.
    pub async fn target(&self, concurrency: u32) -> Result<KisekiPut, String> {
        let config = TcpConfig { max_per_endpoint: CONNECTIONS_PER_NODE, ..TcpConfig::default() };
        let transport = TcpTransport::new(&self.client_tls, config).map_err(|e| e.to_string())?;
        let client = MetadataClient::new(Arc::new(transport), self.addrs.clone(), self.shards)
            .map_err(|e| e.to_string())?;
        let tenants: Vec<TenantId> =
            (1..=TENANTS.min(u8::try_from(concurrency).unwrap_or(u8::MAX))).map(tenant).collect();
        for tenant in &tenants {
            let create = Command::CreateTenant {
                tenant: *tenant,
                dedup: DedupMode::CrossTenant,
                sealed_config: Sealed(vec![0; 32]),
            };
            tolerate_existing(client.propose(create).await)?;
            let bucket = Command::CreateBucket { tenant: *tenant, bucket: bucket_of(tenant) };
            tolerate_existing(client.propose(bucket).await)?;
        }
        Ok(KisekiPut { client, tenants, run: run_id() })
    }

    pub async fn shutdown(self) {
        for (node, server) in self.nodes {
            server.shutdown().await;
            let _ = node.shutdown().await;
        }
    }

    async fn await_leader(&self) -> Result<(), String> {
        let group = self.nodes[0].0.group(ShardId(0)).ok_or("node 1 runs no shard 0")?;
        let deadline = tokio::time::Instant::now() + ELECTION_DEADLINE;
        while group.raft().metrics().borrow().current_leader.is_none() {
            if tokio::time::Instant::now() > deadline {
                return Err(format!("no leader elected within {ELECTION_DEADLINE:?}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

async fn start_node(
    id: u64,
    dir: &std::path::Path,
    tls: &TlsContext,
) -> Result<(Arc<MetadataNode>, TcpServer), String> {
    let transport = TcpTransport::new(tls, TcpConfig::default()).map_err(|e| e.to_string())?;
    let rpc_transport = Arc::new(FabricRpcTransport::new(Arc::new(transport)));
    let node = MetadataNode::start(
        id,
        &dir.join("meta"),
        ShardMap::new(1).map_err(|e| e.to_string())?,
        |shard| RpcNetworkFactory::new(rpc_transport.clone(), shard, RpcLimits::default()),
        |_| {},
    )
    .await
    .map_err(|e| format!("node {id}: {e}"))?;
    let node = Arc::new(node);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("node {id}: bind: {e}"))?;
    let server = TcpServer::start(
        listener,
        tls,
        TcpServerConfig::default(),
        RaftHandler::for_node(node.clone()),
    )
    .map_err(|e| format!("node {id}: listener: {e}"))?;
    Ok((node, server))
}

fn tolerate_existing(result: Result<kiseki_consensus::Applied, ClientError>) -> Result<(), String> {
    match result {
        Ok(_) | Err(ClientError::Rejected(Rejection::AlreadyExists(_))) => Ok(()),
        Err(error) => Err(format!("setting up the bench tenants: {error}")),
    }
}

fn tenant(n: u8) -> TenantId {
    let mut id = [0xbe; 16];
    id[15] = n;
    TenantId(id)
}

/// A prefix that keeps one run's keys apart from an earlier run's on the same cluster.
fn run_id() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// A put of an inline object under a fresh key.
pub struct KisekiPut {
    client: MetadataClient,
    tenants: Vec<TenantId>,
    run: u64,
}

impl PutTarget for KisekiPut {
    async fn put(&self, worker: u32, sequence: u64, value: &[u8]) -> Result<(), String> {
        let tenant = self.tenants[worker as usize % self.tenants.len()];
        let command = Command::PutObject {
            tenant,
            bucket: bucket_of(&tenant),
            key: format!("{}/w{worker}/{sequence}", self.run).into_bytes(),
            manifest: Manifest {
                size_bytes: value.len() as u64,
                body: ObjectBody::Inline(Sealed(value.to_vec())),
                sealed_user_metadata: Sealed(Vec::new()),
                etag: ETag([0; 16]),
            },
        };
        self.client.propose(command).await.map(|_| ()).map_err(|e| e.to_string())
    }
}
