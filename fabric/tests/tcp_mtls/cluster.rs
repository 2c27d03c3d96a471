//! Three nodes on 127.0.0.1, 127.0.0.2 and 127.0.0.3, each an engine behind the chunk
//! service on a real TCP+mTLS listener, and a client replicating over them with R=3/W=2:
//! writes and reads work, keep working after one node is shut down, and fail clearly when
//! too few nodes are left for the write quorum; releases reach every replica.

use std::net::SocketAddr;
use std::sync::Arc;

use kiseki_fabric::{
    BreakerConfig, ChunkClient, Endpoint, FabricSelector, ReplicationConfig, ReplicationError,
    Replicator, TcpConfig, TcpServer, TcpServerConfig,
};
use kiseki_security::{Envelope, OrgId, Role};
use tokio::net::TcpListener;

use crate::support::{Cluster, Node, chunk, tenant, transport};

struct RunningNode {
    endpoint: Endpoint,
    server: TcpServer,
    node: Node,
}

async fn start_node(cluster: &Cluster, index: u8) -> RunningNode {
    let name = format!("node{index}");
    let node = Node::start();
    let tls = cluster.context_for(Role::Server, &name);
    let addr = SocketAddr::from(([127, 0, 0, index], 0));
    let listener = TcpListener::bind(addr).await.expect("127.0.0.x is loopback on Linux");
    let server =
        TcpServer::start(listener, &tls, TcpServerConfig::default(), Arc::clone(&node.service))
            .expect("server starts");
    // Every test certificate carries "localhost" and 127.0.0.1 as its names; the client
    // checks each node's certificate against "localhost".
    let endpoint =
        Endpoint { node: name, addr: server.local_addr(), server_name: "localhost".to_owned() };
    RunningNode { endpoint, server, node }
}

fn replicator(cluster: &Cluster, role: Role, name: &str) -> Replicator {
    let tcp = Arc::new(transport(&cluster.context_for(role, name), TcpConfig::default()));
    let selector = FabricSelector::new(tcp, BreakerConfig::default()).expect("selector");
    let config = ReplicationConfig { replicas: Some(3), write_quorum: Some(2) };
    Replicator::new(ChunkClient::new(Arc::new(selector)), config).expect("replicator")
}

/// Chunks `running`'s engine holds.
async fn chunks_held(running: &RunningNode) -> u64 {
    let handle = running.node.engine.as_ref().unwrap().handle();
    handle.stats().await.unwrap().iter().map(|stats| stats.chunks).sum()
}

/// Waits until every node holds `expected` chunks (a put's last replica may land after
/// the put returned).
async fn settle(nodes: &[RunningNode], expected: u64) {
    for running in nodes {
        let mut held = 0;
        for _ in 0..400 {
            held = chunks_held(running).await;
            if held == expected {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(held, expected, "{} holds {held} chunks", running.endpoint.node);
    }
}

fn envelope(key: u64) -> Envelope {
    Envelope::parse_owned(chunk(key).1).expect("a sealed chunk parses")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_and_survive_one_loss() {
    let cluster = Cluster::new("Test Cluster CA");
    let mut nodes = Vec::new();
    for index in 1..=3 {
        nodes.push(start_node(&cluster, index).await);
    }
    let live: Vec<Endpoint> = nodes.iter().map(|n| n.endpoint.clone()).collect();
    let acme = OrgId::parse("acme").unwrap();
    let client = replicator(&cluster, tenant("acme"), "workload-1");

    // Each call to `envelope` seals anew (random key and nonce): keep the ones stored.
    let stored: Vec<Arc<Envelope>> = (0..8).map(|key| Arc::new(envelope(key))).collect();
    for envelope in &stored {
        let replicated = client.put(&live, Some(&acme), envelope).await.expect("put");
        assert_eq!(replicated.targets.len(), 3, "R=3 over three nodes");
        assert!(replicated.acked.len() >= 2, "W=2: {replicated:?}");
    }
    // Every node ends up holding every chunk (the third put may finish after the return).
    for running in &nodes {
        let handle = running.node.engine.as_ref().unwrap().handle();
        for (key, envelope) in stored.iter().enumerate() {
            let id = *envelope.chunk_id().as_bytes();
            let mut held = false;
            for _ in 0..200 {
                held = handle.contains(id).await.unwrap();
                if held {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            assert!(held, "{} lacks chunk {key}", running.endpoint.node);
        }
    }

    // Another tenant sees none of it, from any replica.
    let other = replicator(&cluster, tenant("other"), "workload-2");
    let org = OrgId::parse("other").unwrap();
    let result = other.get(&live, Some(&org), &stored[1].chunk_id()).await;
    assert!(matches!(result, Err(ReplicationError::NotFound { .. })), "{result:?}");

    // One node goes away: reads fall back to the others, writes still reach W=2.
    let lost = nodes.remove(0);
    lost.server.shutdown().await;
    drop(lost.node);
    for (key, expected) in stored.iter().enumerate() {
        let got = client.get(&live, Some(&acme), &expected.chunk_id()).await.expect("get");
        assert!(got.as_bytes() == expected.as_bytes(), "chunk {key} came back changed");
    }
    for key in 100..104 {
        let envelope = Arc::new(envelope(key));
        let replicated = client.put(&live, Some(&acme), &envelope).await.expect("put, 2 of 3");
        assert_eq!(replicated.acked.len(), 2, "{replicated:?}");
        assert!(!replicated.acked.contains(&"node1".to_owned()));
        let got = client.get(&live, Some(&acme), &envelope.chunk_id()).await.expect("read back");
        assert!(got.as_bytes() == envelope.as_bytes(), "chunk {key} came back changed");
    }

    // A second loss leaves one node: below the write quorum, a put fails and says so.
    let second = nodes.remove(0);
    second.server.shutdown().await;
    drop(second.node);
    match client.put(&live, Some(&acme), &Arc::new(envelope(200))).await {
        Err(ReplicationError::TooFewAcks { required, acked, .. }) => {
            assert_eq!(required, 2);
            assert!(acked.len() < 2, "{acked:?}");
        }
        other => panic!("expected TooFewAcks, got {other:?}"),
    }
    for running in nodes {
        running.server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_reaches_every_replica_and_survives_one_loss() {
    let cluster = Cluster::new("Test Cluster CA");
    let mut nodes = Vec::new();
    for index in 1..=3 {
        nodes.push(start_node(&cluster, index).await);
    }
    let live: Vec<Endpoint> = nodes.iter().map(|n| n.endpoint.clone()).collect();
    let acme = OrgId::parse("acme").unwrap();
    // The gateway: a node identity storing for a tenant.
    let gateway = replicator(&cluster, Role::Server, "gateway");
    let stored: Vec<Arc<Envelope>> = (0..4).map(|key| Arc::new(envelope(300 + key))).collect();
    for envelope in &stored {
        gateway.put(&live, Some(&acme), envelope).await.expect("put");
    }
    settle(&nodes, 4).await;

    let released = gateway.release(&live, Some(&acme), &stored[0].chunk_id()).await.unwrap();
    assert_eq!(released.released.len(), 3, "{released:?}");
    assert!(released.failures.is_empty());
    settle(&nodes, 3).await;
    for running in &nodes {
        assert_eq!(
            running.node.service.tenant_refs().count("acme", stored[0].chunk_id().as_bytes()),
            0
        );
    }
    // Released already everywhere: every replica answers NotFound, which counts as done.
    let again = gateway.release(&live, Some(&acme), &stored[0].chunk_id()).await.unwrap();
    assert_eq!(again.released.len(), 3);

    // A tenant workload cannot release what the gateway stored for its org.
    let workload = replicator(&cluster, tenant("acme"), "workload-1");
    let refused = workload.release(&live, Some(&acme), &stored[1].chunk_id()).await.unwrap();
    assert_eq!(refused.released.len(), 3, "NotFound on every replica: nothing it holds");
    settle(&nodes, 3).await;

    // One node down: the others release, the call says which failed.
    let lost = nodes.remove(0);
    lost.server.shutdown().await;
    drop(lost.node);
    let released = gateway.release(&live, Some(&acme), &stored[1].chunk_id()).await.unwrap();
    assert_eq!(released.released.len(), 2, "{released:?}");
    assert_eq!(released.failures.len(), 1);
    assert_eq!(released.failures[0].0, "node1");
    settle(&nodes, 2).await;
    for running in nodes {
        running.server.shutdown().await;
    }
}
