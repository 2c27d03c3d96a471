//! Groups whose Raft RPCs go through the byte codec and the node's RPC dispatcher (over an
//! in-process loopback transport): commits, snapshot installs in chunks, appends split to
//! fit the size limit, and refusals of what does not fit.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiseki_consensus::command::{AuditScope, Command, Sealed};
use kiseki_consensus::rpc::{
    RpcLimits, RpcNetworkFactory, RpcServer, RpcTransport, RpcTransportError,
};
use kiseki_consensus::sim::SimDisk;
use kiseki_consensus::{Applied, GroupStore, MetadataGroup, NodeId, ShardId, ShardMap};
use openraft::BasicNode;

use crate::cluster::sim_config;

/// Routes request bytes to the target node's dispatcher; nodes in `cut` are unreachable.
#[derive(Default)]
struct Loopback {
    servers: Mutex<HashMap<NodeId, RpcServer>>,
    cut: Mutex<BTreeSet<NodeId>>,
    largest_request_bytes: Mutex<usize>,
}

impl RpcTransport for Loopback {
    async fn call(
        &self,
        target: NodeId,
        _node: &BasicNode,
        request: Vec<u8>,
    ) -> Result<Vec<u8>, RpcTransportError> {
        if self.cut.lock().expect("cut").contains(&target) {
            return Err(RpcTransportError::Unreachable(format!("node {target} is cut off")));
        }
        {
            let mut largest = self.largest_request_bytes.lock().expect("largest");
            *largest = (*largest).max(request.len());
        }
        let server = self.servers.lock().expect("servers").get(&target).cloned();
        let server = server.ok_or_else(|| RpcTransportError::Unreachable("no such node".into()))?;
        Ok(server.handle(&request).await)
    }
}

fn big_audit(n: u64) -> Command {
    let mut record = vec![n as u8; 2048];
    record[..8].copy_from_slice(&n.to_le_bytes());
    Command::AppendAudit { scope: AuditScope::System, sealed_record: Sealed(record) }
}

#[tokio::test(start_paused = true)]
async fn groups_replicate_through_the_rpc_codec_within_its_size_limit() {
    let limits = RpcLimits { max_bytes: 12 << 10 };
    let shards = ShardMap::new(1).expect("one shard");
    let transport = Arc::new(Loopback::default());
    let mut groups = BTreeMap::new();
    for id in 1..=3u64 {
        let server = RpcServer::new(limits);
        let store =
            GroupStore::open_backend(SimDisk::new().backend(), ShardId(0), shards).expect("store");
        let network = RpcNetworkFactory::new(transport.clone(), ShardId(0), limits);
        let mut config = sim_config(id, ShardId(0), shards);
        config.snapshot_chunk_bytes = 8 << 10;
        let group = MetadataGroup::start(config, store, network).await.expect("start");
        server.register(ShardId(0), group.raft().clone());
        transport.servers.lock().expect("servers").insert(id, server);
        groups.insert(id, group);
    }
    let members = (1..=3).map(|id| (id, BasicNode::new(format!("node-{id}")))).collect();
    groups[&1].initialize(members).await.expect("initialize");
    let mut leader = None;
    for _ in 0..100 {
        leader = groups[&1].raft().metrics().borrow().current_leader;
        if leader.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let leader = leader.expect("a leader over the codec");
    let lagging = *groups.keys().find(|id| **id != leader).expect("a follower");
    transport.cut.lock().expect("cut").insert(lagging);
    // 2 KiB records one by one: appends of several entries exceed 12 KiB and are split,
    // and the leader purges behind snapshots while the follower is away.
    for n in 0..60 {
        let applied = groups[&leader].propose(big_audit(n)).await.expect("commit over the codec");
        assert!(matches!(applied, Applied::AuditSequence(_)));
    }
    transport.cut.lock().expect("cut").clear();
    let target = groups[&leader].raft().metrics().borrow().last_log_index;
    let mut metrics = groups[&lagging].raft().metrics();
    tokio::time::timeout(Duration::from_secs(30), async {
        while metrics.borrow_and_update().last_applied.map(|l| l.index) < target {
            metrics.changed().await.expect("metrics");
        }
    })
    .await
    .expect("the follower catches up over the codec");
    assert!(groups[&lagging].raft().metrics().borrow().snapshot.is_some(), "by snapshot");
    let largest = *transport.largest_request_bytes.lock().expect("largest");
    assert!(largest <= limits.max_bytes, "a {largest}-byte RPC went out over the limit");
    assert!(largest > 4 << 10, "appends carried several entries ({largest} bytes)");
    let leader_rows = groups[&leader].local_view().and_then(|v| v.rows()).expect("rows");
    let lagging_rows = groups[&lagging].local_view().and_then(|v| v.rows()).expect("rows");
    assert_eq!(leader_rows, lagging_rows);
    for group in groups.values() {
        group.shutdown().await.expect("shutdown");
    }
}
