//! A cluster of metadata groups on the simulated disk and network, with crash, restart and
//! a watch that records every leader it sees per term.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiseki_consensus::command::{
    AuditScope, ChunkId, ChunkRef, DedupMode, ETag, Manifest, ObjectBody, Sealed, TenantId,
};
use kiseki_consensus::sim::{SimDisk, SimNetwork};
use kiseki_consensus::{
    Applied, Command, ConsensusError, GroupConfig, GroupStore, MetadataGroup, NodeId, ShardId,
    ShardMap,
};
use openraft::{BasicNode, ServerState};

/// Leaders seen per term, by any node, across every incarnation.
pub type LeaderLog = Arc<Mutex<BTreeMap<u64, BTreeSet<NodeId>>>>;

pub struct SimNode {
    pub disk: SimDisk,
    pub group: Option<Arc<MetadataGroup>>,
    /// The disk's generation when this incarnation opened it.
    opened: u64,
    watch: Option<tokio::task::JoinHandle<()>>,
}

pub struct SimCluster {
    pub network: SimNetwork,
    pub shard: ShardId,
    pub shards: ShardMap,
    pub nodes: BTreeMap<NodeId, SimNode>,
    pub leaders: LeaderLog,
    config: fn(NodeId, ShardId, ShardMap) -> GroupConfig,
}

/// Timing for simulations: fast elections and frequent snapshots (every 20 entries, 5 kept)
/// so compaction, purge and snapshot installs all happen within a short run.
pub fn sim_config(node: NodeId, shard: ShardId, shards: ShardMap) -> GroupConfig {
    let mut config = GroupConfig::new(node, shard, shards);
    config.heartbeat_interval = Duration::from_millis(50);
    config.election_timeout_min = Duration::from_millis(150);
    config.election_timeout_max = Duration::from_millis(300);
    config.snapshot_logs_since_last = 20;
    config.log_kept_behind_snapshot = 5;
    config.request_timeout = Duration::from_secs(3);
    config
}

impl SimCluster {
    /// Nodes `1..=size`, all started, none initialized.
    pub async fn start(seed: u64, size: u64, shard: ShardId, shards: ShardMap) -> SimCluster {
        let mut cluster = SimCluster {
            network: SimNetwork::new(seed),
            shard,
            shards,
            nodes: BTreeMap::new(),
            leaders: LeaderLog::default(),
            config: sim_config,
        };
        for id in 1..=size {
            cluster
                .nodes
                .insert(id, SimNode { disk: SimDisk::new(), group: None, opened: 0, watch: None });
            cluster.restart(id).await;
        }
        cluster
    }

    pub fn members(&self) -> BTreeMap<NodeId, BasicNode> {
        self.nodes.keys().map(|id| (*id, BasicNode::new(format!("node-{id}")))).collect()
    }

    /// Initializes the group with every node as a voter, from node 1.
    pub async fn initialize(&self) {
        let members = self.members();
        self.group(1).initialize(members).await.expect("initialize");
    }

    pub fn group(&self, id: NodeId) -> Arc<MetadataGroup> {
        self.nodes[&id].group.clone().unwrap_or_else(|| panic!("node {id} is down"))
    }

    pub fn is_up(&self, id: NodeId) -> bool {
        self.nodes.get(&id).is_some_and(|node| node.group.is_some())
    }

    pub fn up(&self) -> Vec<NodeId> {
        self.nodes.iter().filter(|(_, node)| node.group.is_some()).map(|(id, _)| *id).collect()
    }

    /// Adds a node that is not yet a member (for membership changes).
    pub async fn add_node(&mut self, id: NodeId) {
        self.nodes
            .insert(id, SimNode { disk: SimDisk::new(), group: None, opened: 0, watch: None });
        self.restart(id).await;
    }

    /// (Re)starts a node on what its disk holds.
    pub async fn restart(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        assert!(node.group.is_none(), "node {id} is already up");
        node.opened = node.disk.generation();
        let store = GroupStore::open_backend(node.disk.backend(), self.shard, self.shards)
            .expect("open the store on the simulated disk");
        let factory = self.network.factory(self.shard, id);
        let group =
            MetadataGroup::start((self.config)(id, self.shard, self.shards), store, factory)
                .await
                .expect("start the group");
        let group = Arc::new(group);
        self.network.register(self.shard, id, group.raft().clone());
        node.watch = Some(tokio::spawn(watch_leaders(id, group.clone(), self.leaders.clone())));
        node.group = Some(group);
    }

    /// Cuts a node's power: each unsynced disk write survives if `keep` says so, its Raft
    /// instance stops, and the network forgets it. Returns how many writes were lost.
    pub async fn crash(&mut self, id: NodeId, keep: impl FnMut(usize) -> bool) -> usize {
        // The disk goes first, so nothing the dying instance does afterwards reaches it.
        let lost = self.nodes[&id].disk.crash(keep);
        self.bury(id).await;
        lost
    }

    /// Takes down the nodes whose scheduled power cut struck; returns them.
    pub async fn reap_power_cuts(&mut self) -> Vec<NodeId> {
        let struck: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, node)| node.group.is_some() && node.disk.generation() != node.opened)
            .map(|(id, _)| *id)
            .collect();
        for id in &struck {
            self.bury(*id).await;
        }
        struck
    }

    /// Stops what is left of a node whose disk has crashed.
    async fn bury(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        let group = node.group.take().expect("a running node");
        self.network.unregister(self.shard, id);
        if let Some(watch) = node.watch.take() {
            watch.abort();
        }
        let _ = group.shutdown().await;
    }

    /// The leader as the running nodes see it, if they agree on one that is up.
    pub fn leader(&self) -> Option<NodeId> {
        let mut seen = BTreeSet::new();
        for id in self.up() {
            let metrics = self.group(id).raft().metrics().borrow().clone();
            if metrics.state == ServerState::Leader {
                seen.insert((metrics.current_term, id));
            }
        }
        // The newest term's leader wins; an old leader in a minority may still think it is.
        seen.last().map(|(_, id)| *id)
    }

    /// Waits (in simulated time) until some node leads.
    pub async fn wait_for_leader(&self, within: Duration) -> Option<NodeId> {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if let Some(leader) = self.leader() {
                return Some(leader);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Proposes through whichever node leads, following `NotLeader` hints a few times.
    pub async fn propose(&self, command: Command) -> Result<Applied, ConsensusError> {
        let mut target = self.leader().or_else(|| self.up().first().copied());
        for _ in 0..3 {
            let Some(id) = target.filter(|id| self.is_up(*id)) else { break };
            match self.group(id).propose(command.clone()).await {
                Err(ConsensusError::NotLeader { leader }) => target = leader,
                other => return other,
            }
        }
        Err(ConsensusError::NotLeader { leader: None })
    }

    /// Waits until every running node has applied the same last log id as the leader, and
    /// returns it; `None` if that does not happen within `within`.
    pub async fn wait_converged(&self, within: Duration) -> Option<u64> {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            let applied: BTreeSet<Option<u64>> = self
                .up()
                .into_iter()
                .map(|id| {
                    let metrics = self.group(id).raft().metrics().borrow().clone();
                    metrics.last_applied.map(|log_id| log_id.index)
                })
                .collect();
            if let Some(leader) = self.leader() {
                let leader_log = self.group(leader).raft().metrics().borrow().last_log_index;
                if applied.len() == 1 && applied.first().copied().flatten() == leader_log {
                    return leader_log;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Every running node's metadata rows, by node.
    pub fn rows(&self) -> BTreeMap<NodeId, Vec<kiseki_consensus::view::Row>> {
        self.up()
            .into_iter()
            .map(|id| (id, self.group(id).local_view().and_then(|view| view.rows()).expect("rows")))
            .collect()
    }

    /// Each node's Raft state in a line, for failure messages.
    pub fn describe(&self) -> String {
        let mut lines = Vec::new();
        for (id, node) in &self.nodes {
            let Some(group) = &node.group else {
                lines.push(format!("node {id}: down"));
                continue;
            };
            let m = group.raft().metrics().borrow().clone();
            lines.push(format!(
                "node {id}: {:?} term {} vote {} leader {:?} last_log {:?} applied {:?} snapshot {:?} purged {:?} running {:?} members {:?} replication {:?}",
                m.state,
                m.current_term,
                m.vote,
                m.current_leader,
                m.last_log_index,
                m.last_applied.map(|l| l.index),
                m.snapshot.map(|l| l.index),
                m.purged.map(|l| l.index),
                m.running_state,
                m.membership_config.membership().voter_ids().collect::<Vec<_>>(),
                m.replication,
            ));
        }
        lines.push(format!("network {:?}", self.network.stats()));
        lines.join("\n  ")
    }

    /// Terms in which more than one node was seen leading.
    pub fn split_terms(&self) -> Vec<(u64, BTreeSet<NodeId>)> {
        let leaders = self.leaders.lock().expect("leader log");
        leaders.iter().filter(|(_, ids)| ids.len() > 1).map(|(t, ids)| (*t, ids.clone())).collect()
    }

    pub async fn stop(mut self) {
        for id in self.up() {
            let node = self.nodes.get_mut(&id).expect("known node");
            if let Some(watch) = node.watch.take() {
                watch.abort();
            }
            if let Some(group) = node.group.take() {
                let _ = group.shutdown().await;
            }
        }
    }
}

/// Records, on every metrics change, which node leads in which term: the node itself when
/// it is leader, and the leader its committed vote names.
async fn watch_leaders(id: NodeId, group: Arc<MetadataGroup>, leaders: LeaderLog) {
    let mut metrics = group.raft().metrics();
    loop {
        {
            let now = metrics.borrow_and_update().clone();
            let mut log = leaders.lock().expect("leader log");
            if now.state == ServerState::Leader {
                log.entry(now.current_term).or_default().insert(id);
            }
            if now.vote.is_committed() {
                log.entry(now.vote.leader_id().term)
                    .or_default()
                    .insert(now.vote.leader_id().voted_for().unwrap_or(id));
            }
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

// ---- commands the tests propose ----

pub fn tenant(n: u8) -> TenantId {
    TenantId([n; 16])
}

pub fn create_tenant(tenant: TenantId) -> Command {
    Command::CreateTenant {
        tenant,
        dedup: DedupMode::CrossTenant,
        sealed_config: Sealed(vec![1, 2]),
    }
}

pub fn create_bucket(tenant: TenantId, bucket: &str) -> Command {
    Command::CreateBucket { tenant, bucket: bucket.into() }
}

/// An object whose manifest is derived from `n`, so a reader can tell it is the right one.
pub fn put_object(tenant: TenantId, bucket: &str, n: u64) -> Command {
    let chunk = |i: u64| ChunkRef { id: ChunkId([(n + i) as u8; 32]), size_bytes: 100 + i as u32 };
    Command::PutObject {
        tenant,
        bucket: bucket.into(),
        key: object_key(n),
        manifest: Manifest {
            size_bytes: 201,
            body: ObjectBody::Chunks(vec![chunk(0), chunk(1)]),
            sealed_user_metadata: Sealed(n.to_le_bytes().to_vec()),
            etag: ETag([n as u8; 16]),
        },
    }
}

pub fn object_key(n: u64) -> Vec<u8> {
    format!("object-{n}").into_bytes()
}

pub fn audit(n: u64) -> Command {
    Command::AppendAudit {
        scope: AuditScope::System,
        sealed_record: Sealed(n.to_le_bytes().to_vec()),
    }
}
