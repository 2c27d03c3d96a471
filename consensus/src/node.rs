//! A node's metadata: one group member per shard, each on its own database file under the
//! node's `meta/` directory, and the routing of commands to the shard that owns them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::RaftNetworkFactory;

use crate::command::Command;
use crate::error::ConsensusError;
use crate::group::{GroupConfig, MetadataGroup};
use crate::rpc::{RpcLimits, RpcServer};
use crate::shards::ShardMap;
use crate::store::GroupStore;
use crate::types::{Applied, NodeId, ShardId, TypeConfig};

/// Every metadata group member of one node, keyed by shard.
#[derive(Debug)]
pub struct MetadataNode {
    node_id: NodeId,
    shards: ShardMap,
    /// Shared: a node's front ends hold the member they propose through.
    groups: BTreeMap<ShardId, Arc<MetadataGroup>>,
    rpc: RpcServer,
}

impl MetadataNode {
    /// Opens (or creates) `meta_dir/shard-<n>.redb` for every shard of `shards` and starts
    /// a group member on each; `network(shard)` gives each group its network. `configure`
    /// may adjust each group's tuning (the defaults come from `constants.rs`).
    pub async fn start<N>(
        node_id: NodeId,
        meta_dir: &Path,
        shards: ShardMap,
        mut network: impl FnMut(ShardId) -> N,
        configure: impl Fn(&mut GroupConfig),
    ) -> Result<MetadataNode, ConsensusError>
    where
        N: RaftNetworkFactory<TypeConfig>,
    {
        std::fs::create_dir_all(meta_dir)
            .map_err(|e| ConsensusError::Storage(format!("{}: {e}", meta_dir.display())))?;
        let rpc = RpcServer::new(RpcLimits::default());
        let mut groups = BTreeMap::new();
        for shard in shards.shards() {
            let mut config = GroupConfig::new(node_id, shard, shards);
            configure(&mut config);
            let store = GroupStore::open_file(&shard_path(meta_dir, shard), shard, shards)?;
            let group = MetadataGroup::start(config, store, network(shard)).await?;
            rpc.register(shard, group.raft().clone());
            groups.insert(shard, Arc::new(group));
        }
        Ok(MetadataNode { node_id, shards, groups, rpc })
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    pub fn shards(&self) -> ShardMap {
        self.shards
    }

    /// The member of `shard`'s group.
    pub fn group(&self, shard: ShardId) -> Option<&MetadataGroup> {
        self.groups.get(&shard).map(Arc::as_ref)
    }

    /// The member of `shard`'s group, shared with whoever proposes through it.
    pub fn shared_group(&self, shard: ShardId) -> Option<Arc<MetadataGroup>> {
        self.groups.get(&shard).cloned()
    }

    /// The member of the group that owns `command`'s state.
    pub fn group_for(&self, command: &Command) -> &MetadataGroup {
        let shard = self.shards.shard_of(command.shard_key());
        self.groups.get(&shard).expect("a node runs a member of every shard's group")
    }

    /// Proposes `command` in the group of its shard.
    pub async fn propose(&self, command: Command) -> Result<Applied, ConsensusError> {
        self.group_for(&command).propose(command).await
    }

    /// The endpoint the transport hands Raft RPCs to.
    pub fn rpc_server(&self) -> &RpcServer {
        &self.rpc
    }

    /// Stops every group; their files stay as they are.
    pub async fn shutdown(&self) -> Result<(), ConsensusError> {
        let mut first_error = None;
        for (shard, group) in &self.groups {
            self.rpc.unregister(*shard);
            if let Err(error) = group.shutdown().await {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// The address [`start_single`] gives its one member: not an address, so a store made by
/// a single node is told apart from a cluster member's (whose members are `IP:port`).
pub const SINGLE_NODE_ADDR: &str = "local";

/// How long [`start_single`] waits for its group to elect itself.
pub const SINGLE_LEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A single node's metadata: the one-member group of a one-shard map on
/// `meta_dir/shard-0.redb`, initialized (a second start keeps its membership) and elected.
/// It has no peer, so it sends no RPC: its network is the in-process one, never used.
pub async fn start_single(meta_dir: &Path) -> Result<MetadataGroup, ConsensusError> {
    let shards = ShardMap::new(1)?;
    let config = GroupConfig::new(1, ShardId(0), shards);
    let store = GroupStore::open_file(&shard_path(meta_dir, ShardId(0)), ShardId(0), shards)?;
    let network = crate::sim::SimNetwork::new(0).factory(ShardId(0), 1);
    let group = MetadataGroup::start(config, store, network).await?;
    let members = BTreeMap::from([(1, openraft::BasicNode::new(SINGLE_NODE_ADDR))]);
    let elected = async {
        group.initialize(members).await?;
        let mut metrics = group.raft().metrics();
        while metrics.borrow_and_update().current_leader != Some(1) {
            if metrics.changed().await.is_err() {
                return Err(ConsensusError::Config("the group stopped".into()));
            }
        }
        Ok(())
    };
    let outcome = match tokio::time::timeout(SINGLE_LEADER_TIMEOUT, elected).await {
        Ok(outcome) => outcome,
        Err(_) => Err(ConsensusError::Config("the one-member group elected no leader".into())),
    };
    match outcome {
        Ok(()) => Ok(group),
        Err(error) => {
            let _ = group.shutdown().await;
            Err(error)
        }
    }
}

/// Where a shard's database lives under a node's `meta/` directory.
pub fn shard_path(meta_dir: &Path, shard: ShardId) -> PathBuf {
    meta_dir.join(format!("shard-{}.redb", shard.0))
}
