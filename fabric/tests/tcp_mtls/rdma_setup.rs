//! The RDMA setup op over real TCP+mTLS, on nodes without RDMA (no device here): the
//! answer is `Unavailable` with the reason and the caller's selector stops offering RDMA
//! to that peer; roles that may not use the chunk service are denied; a malformed
//! queue-pair record is a bad request.

use std::sync::Arc;

use kiseki_fabric::rdma::{self, QpEndpointInfo, RdmaSetupChannel, TcpSetupChannel};
use kiseki_fabric::{
    BreakerConfig, FabricRequest, FabricSelector, TcpConfig, Transport, TransportError,
};
use kiseki_proto::{Op, Status};
use kiseki_security::Role;

use crate::support::{Cluster, Node, WAIT, tenant, transport};

/// A well-formed record, as a client with a device would send.
fn record() -> QpEndpointInfo {
    QpEndpointInfo {
        lid: 3,
        qp_num: 0x00_1234,
        psn: 0x00_0042,
        gid: [0; 16],
        gid_index: 0,
        port_num: 1,
        mtu: 5,
        recv_slots: 1,
        slot_bytes: 1 << 20,
    }
}

fn setup_request(payload: Vec<u8>) -> FabricRequest {
    FabricRequest::new(Op::RdmaSetup, payload)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_rdma_answers_unavailable_and_the_peer_becomes_tcp_only() {
    let cluster = Cluster::new("Test Cluster CA");
    let node = Node::start();
    let (_server, peer) = node.serve(&cluster).await;

    for role in [Role::Server, tenant("acme")] {
        let tls = cluster.context_for(role.clone(), "caller");
        let tcp: Arc<dyn Transport> = Arc::new(transport(&tls, TcpConfig::default()));
        let request = setup_request(record().encode().to_vec());
        let response = tokio::time::timeout(WAIT, tcp.call(&peer, request)).await.unwrap();
        let response = response.expect("a response");
        assert_eq!(response.status, Status::Unavailable, "{role:?}");
        assert_eq!(response.payload, rdma::absent_reason().as_bytes(), "{role:?}");

        let selector =
            Arc::new(FabricSelector::new(tcp.clone(), BreakerConfig::default()).unwrap());
        let channel = TcpSetupChannel::new(tcp);
        channel.report_to(&selector);
        selector.set_peer_rdma(&peer.node, true);
        assert!(selector.peer_offers_rdma(&peer.node));
        let exchanged = tokio::time::timeout(WAIT, channel.exchange(&peer, record())).await;
        let Err(TransportError::Unavailable { reason }) = exchanged.unwrap() else {
            panic!("a node without RDMA must answer Unavailable")
        };
        assert!(reason.contains(rdma::absent_reason()), "{reason}");
        assert!(!selector.peer_offers_rdma(&peer.node), "the peer is TCP-only now");
    }
    assert!(rdma::absent_reason().contains("RDMA"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_that_may_not_use_the_chunk_service_may_not_set_up_rdma() {
    let cluster = Cluster::new("Test Cluster CA");
    let node = Node::start();
    let (_server, peer) = node.serve(&cluster).await;

    for role in [Role::ClusterAdmin, Role::Sre, Role::KeyServer] {
        let tls = cluster.context_for(role.clone(), "someone");
        let tcp: Arc<dyn Transport> = Arc::new(transport(&tls, TcpConfig::default()));
        let request = setup_request(record().encode().to_vec());
        let response = tokio::time::timeout(WAIT, tcp.call(&peer, request)).await.unwrap();
        let response = response.expect("a response");
        assert_eq!(response.status, Status::Denied, "{role:?}");
        assert_eq!(response.payload, b"access denied", "says nothing of RDMA: {role:?}");

        let selector =
            Arc::new(FabricSelector::new(tcp.clone(), BreakerConfig::default()).unwrap());
        let channel = TcpSetupChannel::new(tcp);
        channel.report_to(&selector);
        selector.set_peer_rdma(&peer.node, true);
        let exchanged = tokio::time::timeout(WAIT, channel.exchange(&peer, record())).await;
        let error = exchanged.unwrap().expect_err("denied");
        assert!(matches!(error, TransportError::Connect { .. }), "{error:?}");
        assert!(!selector.peer_offers_rdma(&peer.node), "{role:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_setup_record_is_a_bad_request() {
    let cluster = Cluster::new("Test Cluster CA");
    let node = Node::start();
    let (_server, peer) = node.serve(&cluster).await;
    let tcp = transport(&cluster.context_for(Role::Server, "node2"), TcpConfig::default());

    let good = record().encode();
    let mut bad_magic = good;
    bad_magic[0] = b'X';
    let mut bad_mtu = good;
    bad_mtu[34] = 9;
    let malformed = [Vec::new(), good[..47].to_vec(), [&good[..], &[0]].concat()];
    for payload in malformed.into_iter().chain([bad_magic.to_vec(), bad_mtu.to_vec()]) {
        let len_bytes = payload.len();
        let call = tcp.call(&peer, setup_request(payload));
        let response = tokio::time::timeout(WAIT, call).await.unwrap().expect("a response");
        assert_eq!(response.status, Status::BadRequest, "{len_bytes} bytes");
        assert_eq!(response.payload, b"bad request");
    }
    let call = tcp.call(&peer, setup_request(good.to_vec()));
    let response = tokio::time::timeout(WAIT, call).await.unwrap().expect("a response");
    assert_eq!(response.status, Status::Unavailable, "the connection still serves");
}
