//! A group whose Raft RPCs cross real TCP+mTLS connections of the fabric on 127.0.0.1:
//! three nodes elect a leader and commit; a node from another CA, or a revoked one, never
//! reaches the groups; a tenant certificate is denied; a plaintext client is refused.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kiseki_consensus::client::{
    Answer, ClientRequest, Query, decode_client_response, encode_client_request,
};
use kiseki_consensus::command::{
    AuditScope, ChunkId, ChunkRef, Command, DedupMode, ETag, Manifest, ObjectBody, Sealed,
    TenantId, VersionedCommand,
};
use kiseki_consensus::constants::CLIENT_REQUEST_MAX_BYTES;
use kiseki_consensus::fabric::{FabricRpcTransport, RaftHandler};
use kiseki_consensus::rpc::{Refusal, RpcLimits, RpcNetworkFactory, RpcServer, RpcTransport};
use kiseki_consensus::sim::SimDisk;
use kiseki_consensus::{
    Applied, ClientError, GroupStore, MetadataClient, MetadataGroup, MetadataNode, Rejection,
    ShardId, ShardMap,
};
use kiseki_fabric::{TcpConfig, TcpServer, TcpServerConfig, TcpTransport};
use kiseki_security::{
    CRL_FILE, CertificateAuthority, IssueRequest, OrgId, Role, SubjectAltName, TlsBuilder,
    TlsContext, TlsPaths, Validity,
};
use openraft::BasicNode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::cluster::sim_config;

/// A throwaway cluster CA and the leaves it issues (files in a temp dir).
struct Ca {
    temp: tempfile::TempDir,
    ca: CertificateAuthority,
    leaves: usize,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let temp = tempfile::tempdir().expect("temp dir");
        let ca =
            CertificateAuthority::init(&temp.path().join("ca"), name, Validity::days_from_now(2))
                .expect("CA");
        Ca { temp, ca, leaves: 0 }
    }

    /// A TLS context for a fresh leaf of `role`, valid for 127.0.0.1; the leaf's DER too,
    /// for revoking it.
    fn context(&mut self, role: Role) -> (TlsContext, Vec<u8>) {
        let request = IssueRequest {
            role,
            common_name: format!("leaf-{}", self.leaves),
            spiffe_id: None,
            subject_alt_names: vec![SubjectAltName::parse("127.0.0.1").expect("SAN")],
            validity: Validity::days_from_now(1),
        };
        let issued = self.ca.issue(&request).expect("issue");
        let stem = format!("leaf-{}", self.leaves);
        self.leaves += 1;
        let (cert, key) =
            issued.write_files(&self.temp.path().join("leaves"), &stem).expect("leaf files");
        let ca_dir = self.temp.path().join("ca");
        let paths = TlsPaths {
            ca: ca_dir.join(kiseki_security::CA_CERT_FILE),
            cert,
            key,
            crl: Some(ca_dir.join(CRL_FILE)),
        };
        let context = TlsBuilder::new(paths).build().expect("TLS context");
        (context, issued.certificate_der().to_vec())
    }

    fn revoke(&self, der: &[u8]) {
        self.ca.revoke(der, &self.crl_path()).expect("revoke");
    }

    fn crl_path(&self) -> PathBuf {
        self.temp.path().join("ca").join(CRL_FILE)
    }
}

struct Node {
    group: MetadataGroup,
    server: TcpServer,
    tls: TlsContext,
}

async fn start_node(ca: &mut Ca, id: u64, shards: ShardMap) -> Node {
    let (tls, _) = ca.context(Role::Server);
    let rpc = RpcServer::new(RpcLimits::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let server =
        TcpServer::start(listener, &tls, TcpServerConfig::default(), RaftHandler::new(rpc.clone()))
            .expect("raft listener");
    let transport = TcpTransport::new(&tls, TcpConfig::default()).expect("transport");
    let rpc_transport = Arc::new(FabricRpcTransport::new(Arc::new(transport)));
    let network = RpcNetworkFactory::new(rpc_transport, ShardId(0), RpcLimits::default());
    let store =
        GroupStore::open_backend(SimDisk::new().backend(), ShardId(0), shards).expect("store");
    let group = MetadataGroup::start(sim_config(id, ShardId(0), shards), store, network)
        .await
        .expect("start");
    rpc.register(ShardId(0), group.raft().clone());
    Node { group, server, tls }
}

fn audit(n: u8) -> Command {
    Command::AppendAudit { scope: AuditScope::System, sealed_record: Sealed(vec![n; 64]) }
}

/// A vote request for shard 0, as a stranger would send it, through `tls`.
async fn vote_from(tls: &TlsContext, node: &Node) -> Result<Vec<u8>, String> {
    let transport = TcpTransport::new(tls, TcpConfig::default()).expect("transport");
    let stranger = FabricRpcTransport::new(Arc::new(transport));
    let addr = BasicNode::new(node.server.local_addr().to_string());
    // Any bytes will do: an identity that may not talk to the groups is refused before
    // they are decoded.
    stranger.call(1, &addr, vec![0; 16]).await.map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_commit_over_mtls_and_strangers_never_reach_a_group() {
    let (mut ca, nodes, leader) = three_node_cluster("Raft Test CA").await;
    for n in 0..5 {
        let applied = nodes[&leader].group.propose(audit(n)).await.expect("commit over mTLS");
        assert!(matches!(applied, Applied::AuditSequence(_)), "{applied:?}");
    }
    let target = nodes[&leader].group.raft().metrics().borrow().last_log_index;
    for (id, node) in &nodes {
        applied_to(node, target, &format!("node {id}")).await;
    }
    let rows = |id: u64| nodes[&id].group.local_view().and_then(|v| v.rows()).expect("rows");
    assert_eq!(rows(1), rows(2));
    assert_eq!(rows(1), rows(3));

    // A server certificate from another CA: the handshake fails, no RPC is delivered.
    let (foreign, _) = Ca::new("Another CA").context(Role::Server);
    let refused = vote_from(&foreign, &nodes[&1]).await;
    assert!(refused.as_ref().is_err_and(|e| e.contains("handshake")), "{refused:?}");

    // A tenant of this CA connects but is denied before its bytes are decoded.
    let (tenant, _) = ca.context(Role::Workload { org: OrgId::parse("acme").expect("org") });
    let denied = vote_from(&tenant, &nodes[&1]).await;
    assert!(denied.as_ref().is_err_and(|e| e.contains("Denied")), "{denied:?}");

    // A revoked server certificate is refused once the node reloads its CRL.
    let (revoked_tls, revoked_der) = ca.context(Role::Server);
    ca.revoke(&revoked_der);
    assert!(ca.crl_path().exists());
    nodes[&1].tls.reload_crl().expect("reload CRL");
    let refused = vote_from(&revoked_tls, &nodes[&1]).await;
    assert!(refused.is_err(), "a revoked node's RPC was answered: {refused:?}");

    // Plaintext to the Raft port: no TLS, no answer; the connection is closed.
    let mut plain = TcpStream::connect(nodes[&1].server.local_addr()).await.expect("connect");
    plain.write_all(b"\x00\x00\x00\x10plaintext raft rpc").await.expect("write");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the server closes a plaintext connection");
    assert!(!answer.windows(4).any(|w| w == b"raft"), "nothing echoed in the clear");

    // The cluster still commits after all that.
    nodes[&leader].group.propose(audit(9)).await.expect("commit after the strangers");
    for node in nodes.into_values() {
        node.group.shutdown().await.expect("shutdown");
        node.server.shutdown().await;
    }
}

/// Nodes 1-3 of a one-shard group, listening on 127.0.0.1 with certificates of a new CA,
/// initialized over mTLS; and the leader they elected.
async fn three_node_cluster(ca_name: &str) -> (Ca, BTreeMap<u64, Node>, u64) {
    let shards = ShardMap::new(1).expect("one shard");
    let mut ca = Ca::new(ca_name);
    let mut nodes = BTreeMap::new();
    for id in 1..=3u64 {
        nodes.insert(id, start_node(&mut ca, id, shards).await);
    }
    let members = nodes
        .iter()
        .map(|(id, node)| (*id, BasicNode::new(node.server.local_addr().to_string())))
        .collect();
    nodes[&1].group.initialize(members).await.expect("initialize over mTLS");
    let leader = elected(&nodes[&1]).await;
    (ca, nodes, leader)
}

/// The leader `node` sees elected, within 5 s.
async fn elected(node: &Node) -> u64 {
    for _ in 0..200 {
        if let Some(leader) = node.group.raft().metrics().borrow().current_leader {
            return leader;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no leader elected over TCP+mTLS");
}

/// Waits until `node` has applied the log up to `index`.
async fn applied_to(node: &Node, index: Option<u64>, what: &str) {
    let mut metrics = node.group.raft().metrics();
    tokio::time::timeout(Duration::from_secs(10), async {
        while metrics.borrow_and_update().last_applied.map(|l| l.index) < index {
            metrics.changed().await.expect("metrics");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: the log is applied"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_node_joins_over_mtls_and_a_voter_leaves_while_writes_go_on() {
    let (mut ca, mut nodes, leader) = three_node_cluster("Raft Membership CA").await;
    nodes[&leader].group.propose(audit(1)).await.expect("commit before the change");

    let fourth = start_node(&mut ca, 4, ShardMap::new(1).expect("one shard")).await;
    let fourth_addr = BasicNode::new(fourth.server.local_addr().to_string());
    nodes.insert(4, fourth);
    nodes[&leader].group.add_learner(4, fourth_addr).await.expect("the learner catches up");
    nodes[&leader].group.propose(audit(2)).await.expect("commit with a learner");
    nodes[&leader].group.promote([4].into()).await.expect("promote over mTLS");
    let leaving = *nodes.keys().find(|id| **id != leader && **id != 4).expect("a follower");
    nodes[&leader].group.remove([leaving].into()).await.expect("remove a voter");
    for n in 3..6 {
        nodes[&leader].group.propose(audit(n)).await.expect("commit after the change");
    }

    let membership = nodes[&leader].group.raft().metrics().borrow().membership_config.clone();
    let voters: Vec<u64> = membership.membership().voter_ids().collect();
    assert!(voters.contains(&4) && !voters.contains(&leaving), "voters now {voters:?}");
    let target = nodes[&leader].group.raft().metrics().borrow().last_log_index;
    applied_to(&nodes[&4], target, "the new node").await;
    let rows = |id: u64| nodes[&id].group.local_view().and_then(|v| v.rows()).expect("rows");
    assert_eq!(rows(4), rows(leader), "the new node holds what the leader holds");
    for node in nodes.into_values() {
        node.group.shutdown().await.expect("shutdown");
        node.server.shutdown().await;
    }
}

/// A node of `MetadataNode`s on real files, serving Raft RPCs and client requests.
struct FullNode {
    node: Arc<MetadataNode>,
    server: TcpServer,
}

async fn start_full_node(ca: &mut Ca, id: u64, dir: &std::path::Path) -> FullNode {
    let (tls, _) = ca.context(Role::Server);
    let transport = TcpTransport::new(&tls, TcpConfig::default()).expect("transport");
    let rpc_transport = Arc::new(FabricRpcTransport::new(Arc::new(transport)));
    let shards = ShardMap::new(1).expect("one shard");
    let node = MetadataNode::start(
        id,
        &dir.join(format!("node-{id}")),
        shards,
        |shard| RpcNetworkFactory::new(rpc_transport.clone(), shard, RpcLimits::default()),
        |_| {},
    )
    .await
    .expect("start node");
    let node = Arc::new(node);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let server = TcpServer::start(
        listener,
        &tls,
        TcpServerConfig::default(),
        RaftHandler::for_node(node.clone()),
    )
    .expect("listener");
    FullNode { node, server }
}

fn client_of(tls: &TlsContext, nodes: Vec<std::net::SocketAddr>) -> MetadataClient {
    let transport = TcpTransport::new(tls, TcpConfig::default()).expect("transport");
    MetadataClient::new(Arc::new(transport), nodes, ShardMap::new(1).expect("one shard"))
        .expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_follow_the_leader_hint_and_tenants_and_oversized_proposals_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut ca = Ca::new("Raft Client CA");
    let mut nodes = BTreeMap::new();
    for id in 1..=3u64 {
        nodes.insert(id, start_full_node(&mut ca, id, dir.path()).await);
    }
    let members = nodes
        .iter()
        .map(|(id, node)| (*id, BasicNode::new(node.server.local_addr().to_string())))
        .collect();
    let group = |id: u64| nodes[&id].node.group(ShardId(0)).expect("shard 0");
    group(1).initialize(members).await.expect("initialize");
    let mut leader = None;
    for _ in 0..200 {
        leader = group(1).raft().metrics().borrow().current_leader;
        if leader.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let leader = leader.expect("a leader");
    let follower = *nodes.keys().find(|id| **id != leader).expect("a follower");

    // A server-role client that knows only a follower is sent on to the leader.
    let (server_tls, _) = ca.context(Role::Server);
    let client = client_of(&server_tls, vec![nodes[&follower].server.local_addr()]);
    let tenant = TenantId([7; 16]);
    let create = Command::CreateTenant {
        tenant,
        dedup: DedupMode::CrossTenant,
        sealed_config: Sealed(vec![1; 32]),
    };
    assert_eq!(client.propose(create.clone()).await, Ok(Applied::Done));
    let answer = client.read(Query::Tenant { tenant }).await.expect("linearizable read");
    assert!(matches!(answer, Answer::Tenant(Some(_))), "{answer:?}");
    // The state refuses a second creation; nothing changes.
    let again = client.propose(create).await;
    assert!(matches!(again, Err(ClientError::Rejected(Rejection::AlreadyExists(_)))), "{again:?}");
    let status = client
        .status_at(nodes[&follower].server.local_addr(), ShardId(0))
        .await
        .expect("status at the follower");
    assert_eq!(status.leader, Some(leader));
    assert_eq!(status.voters, vec![1, 2, 3]);

    // A tenant's certificate reaches the port but not the groups.
    let (tenant_tls, _) = ca.context(Role::Workload { org: OrgId::parse("acme").expect("org") });
    let stranger = client_of(&tenant_tls, vec![nodes[&leader].server.local_addr()]);
    let bucket = Command::CreateBucket { tenant, bucket: "tenant-bucket".into() };
    assert_eq!(stranger.propose(bucket.clone()).await, Err(ClientError::Denied));
    let read = stranger.read(Query::Tenant { tenant }).await;
    assert_eq!(read, Err(ClientError::Denied));

    // An oversized proposal: our client refuses to send it, and a node refuses it unread.
    let chunks = vec![ChunkRef { id: ChunkId([3; 32]), size_bytes: 1 }; 40_000];
    let huge = Command::PutObject {
        tenant,
        bucket: "tenant-bucket".into(),
        key: b"huge".to_vec(),
        manifest: Manifest {
            size_bytes: 40_000,
            body: ObjectBody::Chunks(chunks),
            sealed_user_metadata: Sealed(Vec::new()),
            etag: ETag([0; 16]),
        },
    };
    let refused = client.propose(huge.clone()).await;
    assert_eq!(refused, Err(ClientError::Refused(Refusal::TooLarge)));
    let request = ClientRequest::Propose(VersionedCommand::current(huge));
    let bytes = encode_client_request(&request, usize::MAX).expect("encode without a limit");
    assert!(bytes.len() > CLIENT_REQUEST_MAX_BYTES, "{} bytes", bytes.len());
    let raw = FabricRpcTransport::new(Arc::new(
        TcpTransport::new(&server_tls, TcpConfig::default()).expect("transport"),
    ));
    let addr = BasicNode::new(nodes[&leader].server.local_addr().to_string());
    let answer = raw.call(leader, &addr, bytes).await.expect("an answer");
    assert_eq!(decode_client_response(&answer), Err(Refusal::TooLarge));

    // The group goes on: the server-role client still commits.
    assert_eq!(client.propose(bucket).await, Ok(Applied::Done));
    let rows = |id: u64| group(id).local_view().and_then(|v| v.rows()).expect("rows");
    let target = group(leader).raft().metrics().borrow().last_log_index;
    for id in 1..=3 {
        let mut metrics = group(id).raft().metrics();
        tokio::time::timeout(Duration::from_secs(10), async {
            while metrics.borrow_and_update().last_applied.map(|l| l.index) < target {
                metrics.changed().await.expect("metrics");
            }
        })
        .await
        .expect("applied");
    }
    assert_eq!(rows(1), rows(2));
    assert_eq!(rows(1), rows(3));
    for node in nodes.into_values() {
        node.server.shutdown().await;
        node.node.shutdown().await.expect("shutdown");
    }
}
