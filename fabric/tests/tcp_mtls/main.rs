//! The TCP transport, its server and the chunk service over real sockets on 127.0.0.1,
//! every connection TLS 1.3 with mutual authentication through `TlsBuilder`.
//!
//! - round trips: put, get, has, release and ping between nodes;
//! - refusals: a client certificate of another CA, a revoked one after a CRL reload, the
//!   other tenant's chunks (answered exactly as absent ones, and not releasable), roles
//!   that may not use the chunk service;
//! - frames: an oversized frame closes its connection, is counted, and the server serves
//!   others; malformed frames and non-TLS bytes close the connection and never panic it;
//! - the pool: many requests multiplexed on one connection, `max_per_endpoint`, the idle
//!   timeout, lost connections, request timeouts, a graceful shutdown.

mod cluster;
mod rdma_setup;
mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kiseki_fabric::{
    ConnectionLimits, Endpoint, FabricRequest, FabricResponse, SharedBytes, TcpConfig,
    TcpServerConfig, TcpTransport, Transport, TransportError,
};
use kiseki_proto::{ChunkResponse, FrameHeader, Op, Status};
use kiseki_security::{CrlReload, Role};
use tokio::net::TcpStream;

use support::{
    Cluster, GateHandler, Node, WAIT, chunk, closed_after_sending, endpoint, eventually,
    get_request, has_request, put_request, raw_tls, release_request, start_server, tenant,
    transport,
};

fn ping() -> FabricRequest {
    FabricRequest::new(Op::Ping, Vec::new())
}

async fn call(
    client: &TcpTransport,
    peer: &Endpoint,
    request: FabricRequest,
) -> Result<FabricResponse, TransportError> {
    tokio::time::timeout(WAIT, client.call(peer, request)).await.expect("a call in time")
}

async fn ok(client: &TcpTransport, peer: &Endpoint, request: FabricRequest) -> Vec<u8> {
    let response = call(client, peer, request).await.expect("a response");
    assert_eq!(response.status, Status::Ok, "{:?}", String::from_utf8_lossy(&response.payload));
    response.payload
}

/// The held bits of a has-chunks answer to `asked` ids.
fn held(payload: &[u8], asked: usize) -> Vec<bool> {
    let Ok(ChunkResponse::Has(bitmap)) = ChunkResponse::decode(Op::HasChunks, payload, asked)
    else {
        panic!("not a has-chunks bitmap: {payload:?}")
    };
    (0..asked).map(|index| bitmap.holds(index)).collect()
}

// ---------------------------------------------------------------------------------------
// Round trips.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_has_round_trip_between_nodes() {
    let cluster = Cluster::new("Test Cluster CA");
    let node = Node::start();
    let (server, peer) = node.serve(&cluster).await;
    let client = transport(&cluster.context_for(Role::Server, "node2"), TcpConfig::default());
    let (id, envelope) = chunk(1);
    let (absent, _) = chunk(2);

    assert!(ok(&client, &peer, ping()).await.is_empty());
    assert!(ok(&client, &peer, put_request(None, &envelope)).await.is_empty());
    assert_eq!(ok(&client, &peer, get_request(None, id)).await, envelope);
    let bits = ok(&client, &peer, has_request(None, &[id, absent, id])).await;
    assert_eq!(held(&bits, 3), [true, false, true]);
    let missing = call(&client, &peer, get_request(None, absent)).await.unwrap();
    assert_eq!(missing.status, Status::NotFound);
    let garbage = FabricRequest::new(Op::PutChunk, vec![0, 1, 2, 3]);
    assert_eq!(call(&client, &peer, garbage).await.unwrap().status, Status::BadRequest);

    let stats = server.stats();
    assert_eq!(stats.connections_opened, 1, "one pooled connection: {stats:?}");
    assert_eq!(stats.handshakes_failed, 0);
    assert_eq!(node.service.tenant_refs().len(), 0, "node puts without a tenant add none");
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Certificates.

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused() {
    let cluster = Cluster::new("Test Cluster CA");
    let other = Cluster::new("Some Other CA");
    let server_tls = cluster.context_for(Role::Server, "node1");
    let handler = GateHandler::releasing_at(1);
    let server = start_server(&server_tls, TcpServerConfig::default(), Arc::clone(&handler)).await;
    // The intruder trusts our CA (so it accepts our server) but presents the other CA's
    // server certificate.
    let intruder = other.leaf(Role::Server, "node1");
    let intruder_tls = other.context_trusting(&intruder, cluster.bundle_with(&other));
    let client = transport(&intruder_tls, TcpConfig::default());
    let peer = endpoint(&server);

    let refused = call(&client, &peer, ping()).await;
    assert!(matches!(refused, Err(TransportError::Handshake { .. })), "{refused:?}");
    let request = FabricRequest::new(Op::GetChunk, vec![0; 33]);
    let refused = call(&client, &peer, request).await;
    assert!(matches!(refused, Err(TransportError::Handshake { .. })), "{refused:?}");
    let stats = server.stats();
    assert_eq!(stats.handshakes_failed, 2, "{stats:?}");
    assert_eq!(stats.connections_opened, 0, "nothing served");
    assert_eq!(stats.requests, 0);
    assert_eq!(client.connections(&peer), 0);
}

#[tokio::test]
async fn a_revoked_client_certificate_is_refused_after_a_crl_reload() {
    let cluster = Cluster::new("Test Cluster CA");
    let server_tls = cluster.context_for(Role::Server, "node1");
    let handler = GateHandler::releasing_at(1);
    let server = start_server(&server_tls, TcpServerConfig::default(), Arc::clone(&handler)).await;
    let peer = endpoint(&server);
    let leaf = cluster.leaf(tenant("acme"), "acme-app");
    let before = transport(&cluster.context(&leaf), TcpConfig::default());
    ok(&before, &peer, ping()).await;
    before.close();
    let served_before = server.stats().requests;

    cluster.revoke(&leaf);
    assert_eq!(server_tls.reload_crl().unwrap(), CrlReload::Swapped { revoked_count: 1 });
    let after = transport(&cluster.context(&leaf), TcpConfig::default());
    let refused = call(&after, &peer, ping()).await;
    assert!(matches!(refused, Err(TransportError::Handshake { .. })), "{refused:?}");
    let put = FabricRequest::new(Op::PutChunk, vec![0; 9]);
    let refused = call(&after, &peer, put).await;
    assert!(matches!(refused, Err(TransportError::Handshake { .. })), "{refused:?}");
    let stats = server.stats();
    assert_eq!(stats.handshakes_failed, 2, "{stats:?}");
    assert_eq!(stats.requests, served_before, "nothing served after the revocation");
    // Others still get in.
    let node = transport(&cluster.context_for(Role::Server, "node2"), TcpConfig::default());
    ok(&node, &peer, ping()).await;
}

// ---------------------------------------------------------------------------------------
// Tenants and roles.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_sees_only_chunks_its_org_references() {
    let cluster = Cluster::new("Test Cluster CA");
    let node = Node::start();
    let (server, peer) = node.serve(&cluster).await;
    let acme = transport(&cluster.context_for(tenant("acme"), "acme-app"), TcpConfig::default());
    let zeta = transport(&cluster.context_for(tenant("zeta"), "zeta-app"), TcpConfig::default());
    let (x, envelope) = chunk(10);
    let (never_stored, _) = chunk(11);

    ok(&acme, &peer, put_request(Some("acme"), &envelope)).await;
    assert_eq!(ok(&acme, &peer, get_request(Some("acme"), x)).await, envelope);
    let bits = ok(&acme, &peer, has_request(Some("acme"), &[x, never_stored])).await;
    assert_eq!(held(&bits, 2), [true, false]);

    // zeta cannot tell X from a chunk that does not exist.
    let of_x = call(&zeta, &peer, get_request(Some("zeta"), x)).await.unwrap();
    let of_absent = call(&zeta, &peer, get_request(Some("zeta"), never_stored)).await.unwrap();
    assert_eq!(of_x.status, Status::NotFound);
    assert_eq!(of_x, of_absent, "an unreferenced chunk answers exactly as an absent one");
    let of_x = ok(&zeta, &peer, has_request(Some("zeta"), &[x, never_stored])).await;
    let of_absent =
        ok(&zeta, &peer, has_request(Some("zeta"), &[never_stored, never_stored])).await;
    assert_eq!(held(&of_x, 2), [false, false]);
    assert_eq!(of_x, of_absent);

    // zeta may not act for acme, nor for no tenant; acme may not act for zeta.
    for request in [
        put_request(Some("acme"), &envelope),
        put_request(None, &envelope),
        get_request(Some("acme"), x),
        get_request(None, x),
        has_request(Some("acme"), &[x]),
    ] {
        let op = request.op;
        let denied = call(&zeta, &peer, request).await.unwrap();
        assert_eq!(denied.status, Status::Denied, "zeta {op:?}");
        assert_eq!(denied.payload, b"access denied", "a generic message");
    }
    let denied = call(&acme, &peer, get_request(Some("zeta"), x)).await.unwrap();
    assert_eq!(denied.status, Status::Denied);

    // Once zeta puts X itself (dedup: the same chunk), it may read it.
    ok(&zeta, &peer, put_request(Some("zeta"), &envelope)).await;
    assert_eq!(ok(&zeta, &peer, get_request(Some("zeta"), x)).await, envelope);
    let refs = node.service.tenant_refs();
    assert_eq!((refs.count("acme", &x), refs.count("zeta", &x)), (1, 1));
    assert_eq!(refs.count("zeta", &never_stored), 0);

    // A node reads every chunk.
    let other_node = transport(&cluster.context_for(Role::Server, "node2"), TcpConfig::default());
    assert_eq!(ok(&other_node, &peer, get_request(None, x)).await, envelope);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_other_than_server_and_workload_are_denied_everything() {
    let cluster = Cluster::new("Test Cluster CA");
    let node = Node::start();
    let (server, peer) = node.serve(&cluster).await;
    let (x, envelope) = chunk(20);
    let writer = transport(&cluster.context_for(Role::Server, "node2"), TcpConfig::default());
    ok(&writer, &peer, put_request(None, &envelope)).await;

    let roles = [Role::ClusterAdmin, Role::Sre, Role::KeyServer, Role::CertGranting];
    for role in roles {
        let name = role.to_string();
        let client = transport(&cluster.context_for(role.clone(), &name), TcpConfig::default());
        for request in [
            ping(),
            get_request(None, x),
            has_request(None, &[x]),
            put_request(None, &envelope),
            get_request(Some("acme"), x),
            release_request(None, x),
            release_request(Some("acme"), x),
        ] {
            let op = request.op;
            let denied = call(&client, &peer, request).await.expect("an answer");
            assert_eq!(denied.status, Status::Denied, "{role} {op:?}");
        }
    }
    assert!(node.engine.as_ref().unwrap().handle().contains(x).await.unwrap(), "not released");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_releases_only_references_its_org_put() {
    let cluster = Cluster::new("Test Cluster CA");
    let node = Node::start();
    let engine = node.engine.as_ref().unwrap().handle();
    let (server, peer) = node.serve(&cluster).await;
    let acme = transport(&cluster.context_for(tenant("acme"), "acme-app"), TcpConfig::default());
    let zeta = transport(&cluster.context_for(tenant("zeta"), "zeta-app"), TcpConfig::default());
    let gateway = transport(&cluster.context_for(Role::Server, "node2"), TcpConfig::default());
    let (x, x_envelope) = chunk(30);
    let (y, y_envelope) = chunk(31);
    let (never_stored, _) = chunk(32);
    ok(&acme, &peer, put_request(Some("acme"), &x_envelope)).await;
    // The gateway (a node) stores Y for acme: acme's workloads see it, but do not hold it.
    ok(&gateway, &peer, put_request(Some("acme"), &y_envelope)).await;
    let refs = node.service.tenant_refs();

    // zeta cannot release acme's chunk: not by naming itself (it holds no reference, and
    // learns no more than of an absent chunk), not by naming acme or no tenant.
    let of_x = call(&zeta, &peer, release_request(Some("zeta"), x)).await.unwrap();
    let of_absent = call(&zeta, &peer, release_request(Some("zeta"), never_stored)).await;
    assert_eq!(of_x.status, Status::NotFound);
    assert_eq!(of_x, of_absent.unwrap(), "an unreferenced chunk answers as an absent one");
    for request in [release_request(Some("acme"), x), release_request(None, x)] {
        let denied = call(&zeta, &peer, request).await.unwrap();
        assert_eq!(
            (denied.status, denied.payload.as_slice()),
            (Status::Denied, &b"access denied"[..])
        );
    }
    // acme's workload cannot release what the gateway keeps for acme.
    let of_y = call(&acme, &peer, release_request(Some("acme"), y)).await.unwrap();
    assert_eq!(of_y.status, Status::NotFound);
    assert_eq!((refs.count("acme", &x), refs.count("acme", &y)), (1, 1));
    assert!(engine.contains(x).await.unwrap() && engine.contains(y).await.unwrap());

    // Each releases its own, once.
    assert!(ok(&acme, &peer, release_request(Some("acme"), x)).await.is_empty());
    assert!(!engine.contains(x).await.unwrap(), "its one reference is gone, and so is X");
    assert_eq!(refs.count("acme", &x), 0);
    let again = call(&acme, &peer, release_request(Some("acme"), x)).await.unwrap();
    assert_eq!(again.status, Status::NotFound, "released already");
    ok(&gateway, &peer, release_request(Some("acme"), y)).await;
    assert!(!engine.contains(y).await.unwrap());
    assert!(refs.is_empty(), "{} entries left", refs.len());
    let denied = call(&acme, &peer, get_request(Some("acme"), y)).await.unwrap();
    assert_eq!(denied.status, Status::NotFound, "released chunks are absent ones");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releasing_an_unknown_chunk_is_not_found_and_a_bad_release_is_refused() {
    let cluster = Cluster::new("Test Cluster CA");
    let node = Node::start();
    let engine = node.engine.as_ref().unwrap().handle();
    let (server, peer) = node.serve(&cluster).await;
    let gateway = transport(&cluster.context_for(Role::Server, "node2"), TcpConfig::default());
    let (x, envelope) = chunk(40);
    let (never_stored, _) = chunk(41);

    for tenant in [None, Some("acme")] {
        let missing = call(&gateway, &peer, release_request(tenant, never_stored)).await.unwrap();
        assert_eq!(missing.status, Status::NotFound, "{tenant:?}");
        assert_eq!(missing.payload, b"not found");
    }
    // Two node puts are two references: the first release leaves the chunk stored.
    ok(&gateway, &peer, put_request(None, &envelope)).await;
    ok(&gateway, &peer, put_request(None, &envelope)).await;
    ok(&gateway, &peer, release_request(None, x)).await;
    assert!(engine.contains(x).await.unwrap(), "one reference left");
    ok(&gateway, &peer, release_request(None, x)).await;
    assert!(!engine.contains(x).await.unwrap());
    let missing = call(&gateway, &peer, release_request(None, x)).await.unwrap();
    assert_eq!(missing.status, Status::NotFound, "no third reference");

    // Malformed releases: a short id, a trailing byte, an invalid tenant.
    let mut trailing = vec![0u8];
    trailing.extend([7; 33]);
    let mut bad_tenant = vec![2u8, b'A', b'B'];
    bad_tenant.extend([7; 32]);
    for payload in [vec![0u8; 9], trailing, bad_tenant] {
        let request = FabricRequest::new(Op::ReleaseChunk, payload);
        let refused = call(&gateway, &peer, request).await.unwrap();
        assert_eq!(refused.status, Status::BadRequest);
    }
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Frames.

#[tokio::test]
async fn an_oversized_frame_closes_its_connection_and_the_server_serves_others() {
    const LIMIT_BYTES: u32 = 1 << 20;
    let cluster = Cluster::new("Test Cluster CA");
    let server_tls = cluster.context_for(Role::Server, "node1");
    let limits = ConnectionLimits { payload_max_bytes: LIMIT_BYTES, ..Default::default() };
    let config = TcpServerConfig { limits, ..TcpServerConfig::default() };
    let handler = GateHandler::releasing_at(1);
    let server = start_server(&server_tls, config, Arc::clone(&handler)).await;
    let peer = endpoint(&server);
    let node_tls = cluster.context_for(Role::Server, "node2");
    let bystander = transport(&node_tls, TcpConfig::default());
    ok(&bystander, &peer, ping()).await;

    let mut raw = raw_tls(&node_tls, server.local_addr()).await;
    let header = FrameHeader::request(Op::PutChunk, 1, LIMIT_BYTES + 1).encode();
    let received = closed_after_sending(&mut raw, &header).await;
    assert_eq!(received, Some(0), "the server closes it without a response");
    let stats = server.stats();
    assert_eq!(stats.frames_oversized, 1, "{stats:?}");

    // The bystander's connection was untouched; new connections are served too.
    let echo = FabricRequest::new(Op::GetChunk, vec![5; 64]);
    assert_eq!(ok(&bystander, &peer, echo).await, vec![5; 64]);
    // A request's shared bytes arrive after its own, in one payload.
    let shared =
        Some(SharedBytes::new(Arc::new((0..=255u8).cycle().take(300_000).collect::<Vec<_>>())));
    let echo = FabricRequest { op: Op::GetChunk, payload: vec![7; 3], shared };
    let mut expected = vec![7; 3];
    expected.extend((0..=255u8).cycle().take(300_000));
    assert_eq!(ok(&bystander, &peer, echo).await, expected);
    let fresh = transport(&node_tls, TcpConfig::default());
    ok(&fresh, &peer, ping()).await;

    // A client does not send what is over its own limit.
    let client_config = TcpConfig { limits, ..TcpConfig::default() };
    let small = transport(&node_tls, client_config);
    let request = FabricRequest::new(Op::PutChunk, vec![0; LIMIT_BYTES as usize + 1]);
    let refused = call(&small, &peer, request).await;
    assert!(matches!(refused, Err(TransportError::Oversized { .. })), "{refused:?}");
    // Shared bytes count toward the limit like the request's own.
    let shared = Some(SharedBytes::new(Arc::new(vec![0u8; LIMIT_BYTES as usize])));
    let request = FabricRequest { op: Op::PutChunk, payload: vec![0; 1], shared };
    let refused = call(&small, &peer, request).await;
    assert!(matches!(refused, Err(TransportError::Oversized { .. })), "{refused:?}");
    assert_eq!(small.stats().requests, 0, "nothing sent");
    server.shutdown().await;
}

#[tokio::test]
async fn malformed_frames_close_the_connection_and_never_harm_the_server() {
    let cluster = Cluster::new("Test Cluster CA");
    let server_tls = cluster.context_for(Role::Server, "node1");
    let handler = GateHandler::releasing_at(1);
    let server = start_server(&server_tls, TcpServerConfig::default(), Arc::clone(&handler)).await;
    let node_tls = cluster.context_for(Role::Server, "node2");
    let good = FrameHeader::request(Op::Ping, 1, 0).encode();
    let with = |at: usize, value: u8| {
        let mut bytes = good;
        bytes[at] = value;
        bytes.to_vec()
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("bad magic", with(0, b'X')),
        ("unknown version", with(4, 9)),
        ("unknown kind", with(6, 7)),
        ("unknown op", with(7, 200)),
        ("status in a request", with(20, 1)),
        ("reserved bits", with(23, 1)),
        ("a response frame", FrameHeader::response(Op::Ping, 1, Status::Ok, 0).encode().to_vec()),
        ("garbage", (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect()),
    ];
    for (index, (name, bytes)) in cases.iter().enumerate() {
        let mut raw = raw_tls(&node_tls, server.local_addr()).await;
        let received = closed_after_sending(&mut raw, bytes).await;
        assert_eq!(received, Some(0), "{name}: closed without a response");
        eventually(name, || server.stats().frames_malformed == index as u64 + 1).await;
    }
    // Not TLS at all: the handshake fails.
    let mut plain = TcpStream::connect(server.local_addr()).await.unwrap();
    let received = closed_after_sending(&mut plain, b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(received.is_some(), "plain TCP: closed (after at most a TLS alert)");
    eventually("handshake failure counted", || server.stats().handshakes_failed == 1).await;

    let stats = server.stats();
    assert_eq!(stats.requests, 0, "no malformed frame became a request: {stats:?}");
    let client = transport(&node_tls, TcpConfig::default());
    ok(&client, &endpoint(&server), ping()).await;
    eventually("all malformed connections closed", || server.stats().connections_open() == 1).await;
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Pooling and connection life.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_requests_are_multiplexed_on_one_connection() {
    const REQUESTS: usize = 32;
    const HELD_AT_ONCE: usize = 8;
    let cluster = Cluster::new("Test Cluster CA");
    let server_tls = cluster.context_for(Role::Server, "node1");
    let handler = GateHandler::releasing_at(HELD_AT_ONCE);
    let server = start_server(&server_tls, TcpServerConfig::default(), Arc::clone(&handler)).await;
    let config = TcpConfig { max_per_endpoint: 1, ..TcpConfig::default() };
    let client = Arc::new(transport(&cluster.context_for(Role::Server, "node2"), config));
    let peer = endpoint(&server);

    let mut calls = tokio::task::JoinSet::new();
    for index in 0..REQUESTS {
        let (client, peer) = (Arc::clone(&client), peer.clone());
        calls.spawn(async move {
            let payload = (index as u32).to_le_bytes().to_vec();
            let request = FabricRequest::new(Op::HasChunks, payload.clone());
            (payload, call(&client, &peer, request).await)
        });
    }
    while let Some(joined) = calls.join_next().await {
        let (payload, response) = joined.unwrap();
        let response = response.expect("a response");
        assert_eq!(response.payload, payload, "each response pairs with its request");
    }
    let max_seen = handler.max_seen.load(Ordering::SeqCst);
    assert!(max_seen >= HELD_AT_ONCE, "{max_seen} requests in flight at once");
    assert_eq!(server.stats().connections_opened, 1);
    assert_eq!(client.connections(&peer), 1);
    assert_eq!(server.stats().requests, REQUESTS as u64 + 1, "and the first ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_keeps_to_max_per_endpoint() {
    let cluster = Cluster::new("Test Cluster CA");
    let server_tls = cluster.context_for(Role::Server, "node1");
    let handler = GateHandler::releasing_at(usize::MAX);
    let server = start_server(&server_tls, TcpServerConfig::default(), Arc::clone(&handler)).await;
    let limits = ConnectionLimits { in_flight_max: 2, ..ConnectionLimits::default() };
    let config = TcpConfig { max_per_endpoint: 2, limits, ..TcpConfig::default() };
    let client = Arc::new(transport(&cluster.context_for(Role::Server, "node2"), config));
    let peer = endpoint(&server);

    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (client, peer) = (Arc::clone(&client), peer.clone());
        calls.spawn(async move {
            call(&client, &peer, FabricRequest::new(Op::GetChunk, vec![1])).await
        });
    }
    eventually("four requests held", || handler.current.load(Ordering::SeqCst) == 4).await;
    assert_eq!(client.connections(&peer), 2);
    let refused = call(&client, &peer, ping()).await;
    assert!(matches!(refused, Err(TransportError::Busy { .. })), "{refused:?}");
    assert_eq!(server.stats().connections_opened, 2, "never more than max_per_endpoint");

    handler.release();
    while let Some(joined) = calls.join_next().await {
        assert_eq!(joined.unwrap().expect("a response").status, Status::Ok);
    }
    ok(&client, &peer, ping()).await;
    assert_eq!(server.stats().connections_opened, 2);
}

#[tokio::test]
async fn idle_connections_close_after_the_idle_timeout() {
    let idle_timeout = Duration::from_millis(300);
    let cluster = Cluster::new("Test Cluster CA");
    let server_tls = cluster.context_for(Role::Server, "node1");
    let handler = GateHandler::releasing_at(1);
    let server = start_server(&server_tls, TcpServerConfig::default(), Arc::clone(&handler)).await;
    let config = TcpConfig { idle_timeout, ..TcpConfig::default() };
    let client = transport(&cluster.context_for(Role::Server, "node2"), config);
    let peer = endpoint(&server);

    ok(&client, &peer, ping()).await;
    let used = tokio::time::Instant::now();
    assert_eq!(client.connections(&peer), 1);
    assert_eq!(server.stats().connections_open(), 1);
    eventually("the client closes it", || client.connections(&peer) == 0).await;
    assert!(used.elapsed() >= idle_timeout, "closed after {:?}", used.elapsed());
    eventually("the server sees it closed", || server.stats().connections_open() == 0).await;
    assert_eq!(client.stats().connections_closed_idle, 1);

    ok(&client, &peer, ping()).await;
    assert_eq!(server.stats().connections_opened, 2, "a new connection when needed again");
}

#[tokio::test]
async fn requests_in_flight_on_a_lost_connection_fail_as_lost() {
    let cluster = Cluster::new("Test Cluster CA");
    let server_tls = cluster.context_for(Role::Server, "node1");
    let handler = GateHandler::releasing_at(usize::MAX);
    let server = start_server(&server_tls, TcpServerConfig::default(), Arc::clone(&handler)).await;
    let client =
        Arc::new(transport(&cluster.context_for(Role::Server, "node2"), TcpConfig::default()));
    let peer = endpoint(&server);

    let held = {
        let (client, peer) = (Arc::clone(&client), peer.clone());
        tokio::spawn(async move {
            call(&client, &peer, FabricRequest::new(Op::PutChunk, vec![1])).await
        })
    };
    eventually("the request is held", || handler.current.load(Ordering::SeqCst) == 1).await;
    drop(server);
    let lost = held.await.unwrap();
    assert!(matches!(&lost, Err(TransportError::ConnectionLost { .. })), "{lost:?}");
    assert!(lost.unwrap_err().may_have_reached_peer());
    let refused = call(&client, &peer, ping()).await;
    assert!(matches!(refused, Err(TransportError::Connect { .. })), "{refused:?}");
}

#[tokio::test]
async fn a_request_without_a_response_in_time_times_out() {
    let cluster = Cluster::new("Test Cluster CA");
    let server_tls = cluster.context_for(Role::Server, "node1");
    let handler = GateHandler::releasing_at(usize::MAX);
    let server = start_server(&server_tls, TcpServerConfig::default(), Arc::clone(&handler)).await;
    let config = TcpConfig { request_timeout: Duration::from_millis(200), ..TcpConfig::default() };
    let client = transport(&cluster.context_for(Role::Server, "node2"), config);
    let peer = endpoint(&server);
    let request = FabricRequest::new(Op::GetChunk, vec![1]);
    let timed_out = call(&client, &peer, request).await;
    assert!(matches!(timed_out, Err(TransportError::Timeout { .. })), "{timed_out:?}");
    handler.release();
    ok(&client, &peer, ping()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_answers_requests_already_read() {
    let cluster = Cluster::new("Test Cluster CA");
    let server_tls = cluster.context_for(Role::Server, "node1");
    let handler = GateHandler::releasing_at(usize::MAX);
    let server = start_server(&server_tls, TcpServerConfig::default(), Arc::clone(&handler)).await;
    let client =
        Arc::new(transport(&cluster.context_for(Role::Server, "node2"), TcpConfig::default()));
    let peer = endpoint(&server);
    let addr = server.local_addr();

    let held = {
        let (client, peer) = (Arc::clone(&client), peer.clone());
        tokio::spawn(async move {
            call(&client, &peer, FabricRequest::new(Op::HasChunks, vec![3])).await
        })
    };
    eventually("the request is held", || handler.current.load(Ordering::SeqCst) == 1).await;
    let shutdown = tokio::spawn(server.shutdown());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(TcpStream::connect(addr).await.is_err(), "no longer accepting");
    handler.release();
    let response = held.await.unwrap().expect("answered before the close");
    assert_eq!(response.payload, [3]);
    tokio::time::timeout(WAIT, shutdown).await.expect("shutdown ends").unwrap();
}
