//! A node's metadata: the Raft group its front ends propose through.
//!
//! - [`MetadataSpec::Single`]: a one-member group on `meta/shard-0.redb`, initialized and
//!   elected at start (`kiseki_consensus::node::start_single`). It has no peer and sends no
//!   RPC. This is what `dev` and a `run` node without peers keep, and what the admin
//!   subcommands (`keys`, `tenant`, `s3-credentials`, `audit`) open while the node is stopped.
//! - [`MetadataSpec::Member`]: this node's member of a cluster's groups (one metadata shard:
//!   the object layer and the key store use one group), its Raft RPCs sent over the fabric's
//!   TCP+mTLS to the peers' fabric addresses and served on this node's fabric listener. With
//!   `init`, a store without membership makes this node and its peers the first voters (as
//!   `kiseki-server metadata --init`); without it, a new member waits for a leader to add it.
//!   A store made by a single node (its member's address is not `IP:port`) is refused: a
//!   cluster member starts on a store of its own.
//!
//! What it does not do: forward requests to the leader (a follower's front ends answer
//! "unavailable"), add or remove members of a running cluster (`MetadataClient` does), or
//! reshard.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use kiseki_consensus::fabric::{FabricRpcTransport, RaftHandler};
use kiseki_consensus::node::{SINGLE_NODE_ADDR, start_single};
use kiseki_consensus::rpc::{RpcLimits, RpcNetworkFactory};
use kiseki_consensus::{ConsensusError, MetadataGroup, MetadataNode, ShardId, ShardMap};
use kiseki_fabric::{TcpConfig, TcpTransport};
use kiseki_security::TlsContext;
use openraft::BasicNode;

use super::NodeError;

/// The shape of a node's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataSpec {
    /// A one-member group (member 1), as the admin subcommands open it.
    Single,
    /// A member of a cluster's groups.
    Member(MemberSpec),
}

/// This node's place in a cluster's metadata groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSpec {
    /// This node's id in every group (the same on every start).
    pub node_id: u64,
    /// Where the peers reach this node's fabric: a specific IP and port.
    pub advertise: SocketAddr,
    /// The other voters, by id.
    pub peers: BTreeMap<u64, SocketAddr>,
    /// Make this node and the peers the first voters of groups with no membership.
    pub init: bool,
}

/// A started metadata: the group the front ends use, and in a cluster the node behind it.
pub(super) struct Metadata {
    group: Arc<MetadataGroup>,
    member: Option<Member>,
}

struct Member {
    node: Arc<MetadataNode>,
    spec: MemberSpec,
    initialized: bool,
    watchers: Vec<tokio::task::JoinHandle<()>>,
}

impl Metadata {
    /// Starts the metadata `spec` describes on `meta_dir`; a member's RPCs go out with
    /// `tls`.
    pub(super) async fn start(
        spec: &MetadataSpec,
        meta_dir: &Path,
        tls: &TlsContext,
    ) -> Result<Metadata, NodeError> {
        match spec {
            MetadataSpec::Single => {
                let group = start_single(meta_dir).await.map_err(|error| {
                    metadata(format!(
                        "the one-member group in {}: {error} (a cluster member's data dir \
                         needs its peers configured)",
                        meta_dir.display()
                    ))
                })?;
                Ok(Metadata { group: Arc::new(group), member: None })
            }
            MetadataSpec::Member(member) => start_member(member, meta_dir, tls).await,
        }
    }

    /// The group this node's front ends propose and read through.
    pub(super) fn group(&self) -> &Arc<MetadataGroup> {
        &self.group
    }

    /// The handler of `Op::Raft` on the fabric listener, for a cluster member.
    pub(super) fn raft_handler(&self) -> Option<Arc<RaftHandler>> {
        self.member.as_ref().map(|member| RaftHandler::for_node(Arc::clone(&member.node)))
    }

    /// This node's id in a cluster's groups; `None` for a single node.
    pub(super) fn cluster_node_id(&self) -> Option<u64> {
        self.member.as_ref().map(|member| member.spec.node_id)
    }

    /// This node's place, as a start summary says it.
    pub(super) fn summary(&self) -> String {
        let Some(member) = &self.member else {
            return "a one-member group (this node; meta/shard-0.redb)".to_owned();
        };
        let spec = &member.spec;
        let mut members = vec![format!("{}={} (this node)", spec.node_id, spec.advertise)];
        members.extend(spec.peers.iter().map(|(id, addr)| format!("{id}={addr}")));
        let state = if member.initialized {
            "initialized the groups on this start"
        } else {
            "resumed, or waiting to be added"
        };
        format!("node {} of {}; {state}", spec.node_id, members.join(", "))
    }

    /// Stops the group (and a member's leader watch); the store stays as it is.
    pub(super) async fn shutdown(&self) -> Result<(), NodeError> {
        let stopped = match &self.member {
            Some(member) => {
                for watcher in &member.watchers {
                    watcher.abort();
                }
                member.node.shutdown().await
            }
            None => self.group.shutdown().await,
        };
        stopped.map_err(|error| metadata(format!("stopping the group: {error}")))
    }
}

async fn start_member(
    spec: &MemberSpec,
    meta_dir: &Path,
    tls: &TlsContext,
) -> Result<Metadata, NodeError> {
    let shards = ShardMap::new(1).map_err(consensus)?;
    let transport = TcpTransport::new(tls, TcpConfig::default()).map_err(NodeError::Tls)?;
    let rpc = Arc::new(FabricRpcTransport::new(Arc::new(transport)));
    let node = MetadataNode::start(
        spec.node_id,
        meta_dir,
        shards,
        |shard| RpcNetworkFactory::new(Arc::clone(&rpc), shard, RpcLimits::default()),
        |_| {},
    )
    .await
    .map_err(consensus)?;
    let node = Arc::new(node);
    let started = async {
        let group = node
            .shared_group(ShardId(0))
            .ok_or_else(|| metadata("the node runs no member of shard 0".to_owned()))?;
        if made_by_a_single_node(&group).await.map_err(consensus)? {
            return Err(metadata(format!(
                "{} holds a single node's metadata (made by a node without peers, or by an \
                 admin subcommand run on this data dir); a cluster member starts on a data \
                 dir of its own",
                meta_dir.display()
            )));
        }
        let mut members = BTreeMap::from([(spec.node_id, spec.advertise)]);
        members.extend(spec.peers.iter().map(|(id, addr)| (*id, *addr)));
        let members =
            members.into_iter().map(|(id, addr)| (id, BasicNode::new(addr.to_string()))).collect();
        let initialized = initialize_groups(&node, members, spec.init).await.map_err(consensus)?;
        Ok((group, initialized))
    };
    match started.await {
        Ok((group, initialized)) => {
            let watchers = shards
                .shards()
                .filter_map(|shard| node.group(shard))
                .map(|group| tokio::spawn(log_leader_changes(group.raft().clone(), spec.node_id)))
                .collect();
            let member = Member { node, spec: spec.clone(), initialized, watchers };
            Ok(Metadata { group, member: Some(member) })
        }
        Err(error) => {
            let _ = node.shutdown().await;
            Err(error)
        }
    }
}

/// Whether `group`'s membership is [`start_single`]'s (a member without an `IP:port`).
async fn made_by_a_single_node(group: &MetadataGroup) -> Result<bool, ConsensusError> {
    let addrs = member_addrs(group).await?;
    Ok(addrs.iter().any(|addr| addr == SINGLE_NODE_ADDR))
}

/// The addresses of `group`'s members as its store holds them. Asked of the Raft core, not
/// read from its metrics: right after a start the metrics may not show the stored
/// membership yet.
async fn member_addrs(group: &MetadataGroup) -> Result<Vec<String>, ConsensusError> {
    group
        .raft()
        .with_raft_state(|state| {
            let membership = state.membership_state.effective().membership();
            membership.nodes().map(|(_, node)| node.addr.clone()).collect()
        })
        .await
        .map_err(|error| ConsensusError::Storage(error.to_string()))
}

/// With `init`, makes `members` the first voters of every group of `node` that has none;
/// says whether it did for any. Without `init` a group with no membership waits for a
/// leader to add this node.
pub(crate) async fn initialize_groups(
    node: &MetadataNode,
    members: BTreeMap<u64, BasicNode>,
    init: bool,
) -> Result<bool, ConsensusError> {
    let mut initialized = false;
    for shard in node.shards().shards() {
        let Some(group) = node.group(shard) else { continue };
        if !member_addrs(group).await?.is_empty() {
            if init {
                tracing::info!(target: "kiseki::metadata", %shard, "already initialized; init ignored");
            }
            continue;
        }
        if init {
            group.initialize(members.clone()).await?;
            initialized = true;
        }
    }
    Ok(initialized)
}

/// Logs every change of leader a group sees (target `kiseki::metadata`).
pub(crate) async fn log_leader_changes(raft: kiseki_consensus::Raft, node_id: u64) {
    let mut metrics = raft.metrics();
    let mut last = None;
    loop {
        let (leader, term) = {
            let metrics = metrics.borrow_and_update();
            (metrics.current_leader, metrics.current_term)
        };
        if leader != last {
            match leader {
                Some(leader) => tracing::info!(
                    target: "kiseki::metadata",
                    node = node_id,
                    leader,
                    term,
                    "leader elected{}",
                    if leader == node_id { " (this node)" } else { "" }
                ),
                None => {
                    tracing::info!(target: "kiseki::metadata", node = node_id, term, "no leader")
                }
            }
            last = leader;
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

fn metadata(reason: String) -> NodeError {
    NodeError::Metadata { reason }
}

fn consensus(error: ConsensusError) -> NodeError {
    metadata(error.to_string())
}
