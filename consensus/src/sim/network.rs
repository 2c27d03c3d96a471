//! An in-process network for Raft groups, with faults drawn from a seed.
//!
//! Every RPC picks, from the network's generator: whether the request is lost, a delay on
//! the way there and one on the way back (different delays reorder RPCs between streams),
//! and whether the reply is lost after the receiver acted on the request (the case that
//! tests idempotence). Partitions put nodes on sides; nodes on different sides cannot talk,
//! and a partition that appears while an RPC is in flight loses its reply. A node that is
//! not registered (crashed, or not started yet) is unreachable.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use crate::rpc::Served;
use crate::sim::SimRng;
use crate::types::{NodeId, Raft, ShardId, TypeConfig};

/// How unreliable the network is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetworkFaults {
    /// Requests lost on the way, per thousand.
    pub drop_request_per_mille: u32,
    /// Replies lost after the receiver acted, per thousand.
    pub drop_reply_per_mille: u32,
    /// Each direction of an RPC takes a uniform random delay up to this.
    pub delay_max: Duration,
}

/// Counters of what the network did, for tests to check that faults happened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetworkStats {
    pub delivered: u64,
    pub requests_dropped: u64,
    pub replies_dropped: u64,
    pub unreachable: u64,
}

/// The network all simulated nodes of a test share. Clones share it.
#[derive(Clone, Debug)]
pub struct SimNetwork {
    state: Arc<Mutex<NetState>>,
}

struct NetState {
    rng: SimRng,
    faults: NetworkFaults,
    nodes: HashMap<(ShardId, NodeId), Served>,
    /// Which side of a partition each node is on; absent means side 0.
    sides: HashMap<NodeId, u32>,
    stats: NetworkStats,
}

impl std::fmt::Debug for NetState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetState")
            .field("faults", &self.faults)
            .field("stats", &self.stats)
            .finish()
    }
}

impl NetState {
    fn connected(&self, a: NodeId, b: NodeId) -> bool {
        self.sides.get(&a).copied().unwrap_or(0) == self.sides.get(&b).copied().unwrap_or(0)
    }

    fn delay(&mut self) -> Duration {
        let max_us = u64::try_from(self.faults.delay_max.as_micros()).unwrap_or(u64::MAX);
        if max_us == 0 { Duration::ZERO } else { Duration::from_micros(self.rng.below(max_us + 1)) }
    }
}

/// What the network decided for one RPC before sending it.
struct Fate {
    target: Served,
    drop_request: bool,
    drop_reply: bool,
    there: Duration,
    back: Duration,
}

impl SimNetwork {
    pub fn new(seed: u64) -> SimNetwork {
        SimNetwork {
            state: Arc::new(Mutex::new(NetState {
                rng: SimRng::new(seed),
                faults: NetworkFaults::default(),
                nodes: HashMap::new(),
                sides: HashMap::new(),
                stats: NetworkStats::default(),
            })),
        }
    }

    /// Makes `raft` reachable as node `node` of `shard`.
    pub fn register(&self, shard: ShardId, node: NodeId, raft: Raft) {
        self.lock().nodes.insert((shard, node), Served::new(raft));
    }

    /// Makes node `node` of `shard` unreachable (it crashed or stopped).
    pub fn unregister(&self, shard: ShardId, node: NodeId) {
        self.lock().nodes.remove(&(shard, node));
    }

    pub fn set_faults(&self, faults: NetworkFaults) {
        self.lock().faults = faults;
    }

    /// Cuts `node` off from every other node.
    pub fn isolate(&self, node: NodeId) {
        let mut state = self.lock();
        let side = state.sides.values().copied().max().unwrap_or(0) + 1;
        state.sides.insert(node, side);
    }

    /// Splits the cluster: `minority` on one side, everyone else on the other.
    pub fn partition(&self, minority: &[NodeId]) {
        let mut state = self.lock();
        state.sides.clear();
        for node in minority {
            state.sides.insert(*node, 1);
        }
    }

    /// Ends every partition.
    pub fn heal(&self) {
        self.lock().sides.clear();
    }

    pub fn stats(&self) -> NetworkStats {
        self.lock().stats
    }

    /// The factory node `source` of `shard` gives its Raft instance.
    pub fn factory(&self, shard: ShardId, source: NodeId) -> SimNetworkFactory {
        SimNetworkFactory { network: self.clone(), shard, source }
    }

    fn lock(&self) -> MutexGuard<'_, NetState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn fate(&self, shard: ShardId, source: NodeId, target: NodeId) -> Option<Fate> {
        let mut state = self.lock();
        let raft = match state.nodes.get(&(shard, target)) {
            Some(served) if state.connected(source, target) => served.clone(),
            _ => {
                state.stats.unreachable += 1;
                return None;
            }
        };
        let faults = state.faults;
        let drop_request = state.rng.chance(faults.drop_request_per_mille);
        let drop_reply = state.rng.chance(faults.drop_reply_per_mille);
        let there = state.delay();
        let back = state.delay();
        Some(Fate { target: raft, drop_request, drop_reply, there, back })
    }

    /// Carries one RPC from `source` to `target` through the faults.
    async fn carry<R, E, F, Fut>(
        &self,
        shard: ShardId,
        source: NodeId,
        target: NodeId,
        call: F,
    ) -> Result<R, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        E: std::error::Error,
        F: FnOnce(Served) -> Fut,
        Fut: Future<Output = Result<R, RaftError<NodeId, E>>>,
    {
        let Some(fate) = self.fate(shard, source, target) else {
            return Err(RPCError::Unreachable(Unreachable::new(&lost("unreachable"))));
        };
        tokio::time::sleep(fate.there).await;
        if fate.drop_request {
            self.lock().stats.requests_dropped += 1;
            return Err(RPCError::Network(NetworkError::new(&lost("request lost"))));
        }
        let reply = call(fate.target).await;
        tokio::time::sleep(fate.back).await;
        let mut state = self.lock();
        if fate.drop_reply || !state.connected(source, target) {
            state.stats.replies_dropped += 1;
            return Err(RPCError::Network(NetworkError::new(&lost("reply lost"))));
        }
        state.stats.delivered += 1;
        reply.map_err(|error| RPCError::RemoteError(RemoteError::new(target, error)))
    }
}

fn lost(what: &'static str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::ConnectionReset, what)
}

/// Connects one node's Raft instance of one shard to the simulated network.
#[derive(Clone, Debug)]
pub struct SimNetworkFactory {
    network: SimNetwork,
    shard: ShardId,
    source: NodeId,
}

/// One node's connection to one peer over the simulated network.
#[derive(Debug)]
pub struct SimConnection {
    network: SimNetwork,
    shard: ShardId,
    source: NodeId,
    target: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for SimNetworkFactory {
    type Network = SimConnection;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> SimConnection {
        SimConnection {
            network: self.network.clone(),
            shard: self.shard,
            source: self.source,
            target,
        }
    }
}

impl RaftNetwork<TypeConfig> for SimConnection {
    async fn append_entries(
        &mut self,
        request: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.network
            .carry(self.shard, self.source, self.target, |served| async move {
                served.append_entries(request).await
            })
            .await
    }

    async fn install_snapshot(
        &mut self,
        request: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.network
            .carry(self.shard, self.source, self.target, |served| async move {
                served.raft().install_snapshot(request).await
            })
            .await
    }

    async fn vote(
        &mut self,
        request: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.network
            .carry(self.shard, self.source, self.target, |served| async move {
                served.vote(request).await
            })
            .await
    }
}
