//! The object layer on replicated chunks: three chunk-service nodes on 127.0.0.1-3 (each an
//! engine on a memory device behind a TCP+mTLS listener with a server certificate of one
//! test CA), and an object store whose chunks go through the fabric with R=3, W=2, as a
//! node (a server-role certificate) would store them.
//!
//! - a multi-chunk object lands on all three nodes, and reads back whole and ranged with
//!   the node first in a chunk's placement stopped; writes still reach W=2;
//! - with two nodes stopped a put fails with the quorum error, names no bucket or key,
//!   commits no manifest, and leaves no chunk on the node still up;
//! - an overwrite, a delete, and a multipart upload's abort release their chunks on every
//!   live replica; a completed multipart upload reads back.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiseki_consensus::MetadataGroup;
use kiseki_consensus::command::{DedupMode, ObjectBody};
use kiseki_consensus::node::start_single;
use kiseki_engine::Engine;
use kiseki_fabric::constants::TENANT_REFS_MAX_DEFAULT;
use kiseki_fabric::{
    BreakerConfig, ChunkClient, ChunkService, Endpoint, FabricSelector, ReplicationConfig,
    Replicator, TcpConfig, TcpServer, TcpServerConfig, TcpTransport, placement,
};
use kiseki_gateway::chunks::{Chunks, ReplicatedChunks};
use kiseki_gateway::objects::{ObjectConfig, ObjectError, ObjectStore, UserMetadata};
use kiseki_security::authz::Authorizer;
use kiseki_security::keymanager::MemoryKeyStore;
use kiseki_security::{
    CRL_FILE, CertificateAuthority, ChunkId, IssueRequest, Role, SubjectAltName, TenantId,
    TlsBuilder, TlsContext, TlsPaths, Validity,
};
use tokio::net::TcpListener;

/// Longest any one wait may take before a test fails instead of hanging.
const WAIT: Duration = Duration::from_secs(10);

/// Small chunks, so a few KiB make a many-chunk object.
const CHUNK: usize = 1000;

/// A test cluster CA and the certificates it issued, in a temporary directory.
struct Pki {
    temp: tempfile::TempDir,
    ca: CertificateAuthority,
    leaves: AtomicUsize,
}

impl Pki {
    fn new() -> Pki {
        let temp = tempfile::tempdir().unwrap();
        let validity = Validity::days_from_now(2);
        let ca = CertificateAuthority::init(&temp.path().join("ca"), "Test CA", validity).unwrap();
        Pki { temp, ca, leaves: AtomicUsize::new(0) }
    }

    /// A TLS context for a fresh server-role certificate named `name`, valid for
    /// "localhost" and 127.0.0.1 (what clients check every node against).
    fn server_context(&self, name: &str) -> TlsContext {
        let request = IssueRequest {
            role: Role::Server,
            common_name: name.to_owned(),
            spiffe_id: None,
            subject_alt_names: vec![
                SubjectAltName::parse("localhost").unwrap(),
                SubjectAltName::parse("127.0.0.1").unwrap(),
            ],
            validity: Validity::days_from_now(1),
        };
        let issued = self.ca.issue(&request).unwrap();
        let stem = format!("leaf-{}", self.leaves.fetch_add(1, Ordering::Relaxed));
        let (cert, key) = issued.write_files(&self.temp.path().join("leaves"), &stem).unwrap();
        let ca_dir = self.temp.path().join("ca");
        let ca = ca_dir.join(kiseki_security::CA_CERT_FILE);
        let paths = TlsPaths { ca, cert, key, crl: Some(ca_dir.join(CRL_FILE)) };
        TlsBuilder::new(paths).build().unwrap()
    }
}

/// A chunk-service node: an engine behind the chunk service, on a TCP+mTLS listener.
struct Node {
    endpoint: Endpoint,
    server: Option<TcpServer>,
    engine: Option<Engine>,
}

impl Node {
    async fn start(pki: &Pki, index: u8, buffer_bytes: u32) -> Node {
        let name = format!("node{index}");
        let open = move |_| common::memory_shard(32 << 20, 32, buffer_bytes);
        let engine = Engine::start(1, Arc::new(open)).unwrap();
        let service =
            ChunkService::new(engine.handle(), Authorizer::default(), TENANT_REFS_MAX_DEFAULT);
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, index], 0)))
            .await
            .expect("127.0.0.x is loopback on Linux");
        let tls = pki.server_context(&name);
        let server =
            TcpServer::start(listener, &tls, TcpServerConfig::default(), Arc::new(service))
                .unwrap();
        let endpoint =
            Endpoint { node: name, addr: server.local_addr(), server_name: "localhost".into() };
        Node { endpoint, server: Some(server), engine: Some(engine) }
    }

    /// Chunks this node's engine holds (puts acknowledged, last release not).
    async fn chunks_held(&self) -> u64 {
        let engine = self.engine.as_ref().expect("a running node").handle();
        engine.stats().await.unwrap().iter().map(|stats| stats.chunks).sum()
    }

    /// Stops serving and shuts the engine down: the node is gone.
    async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
        if let Some(engine) = self.engine.take() {
            engine.shutdown().unwrap();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(engine) = self.engine.take() {
            let _ = engine.shutdown();
        }
    }
}

struct Fixture {
    _pki: Pki,
    _dir: tempfile::TempDir,
    _group: Arc<MetadataGroup>,
    store: ObjectStore<MemoryKeyStore>,
    /// The gateway's own client, for asking nodes what they hold.
    client: ChunkClient,
    nodes: Vec<Node>,
}

impl Fixture {
    /// Three nodes whose engines take chunks of up to `buffer_bytes`, and an object store
    /// cutting `chunk_size_bytes` chunks, replicating them with R=3, W=2.
    async fn new(chunk_size_bytes: usize, buffer_bytes: u32) -> Fixture {
        let pki = Pki::new();
        let mut nodes = Vec::new();
        for index in 1..=3 {
            nodes.push(Node::start(&pki, index, buffer_bytes).await);
        }
        let tls = pki.server_context("gateway");
        // A short request timeout: a test with nodes stopped should not wait long.
        let config = TcpConfig { request_timeout: Duration::from_secs(5), ..TcpConfig::default() };
        let tcp = Arc::new(TcpTransport::new(&tls, config).unwrap());
        let selector = FabricSelector::new(tcp, BreakerConfig::default()).unwrap();
        let client = ChunkClient::new(Arc::new(selector));
        let replication = ReplicationConfig { replicas: Some(3), write_quorum: Some(2) };
        let replicator = Replicator::new(client.clone(), replication).unwrap();
        let endpoints = nodes.iter().map(|node| node.endpoint.clone()).collect();
        let chunks = ReplicatedChunks::new(replicator, endpoints).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let group = Arc::new(start_single(dir.path()).await.expect("a metadata group"));
        let mut keys = common::key_manager(9);
        keys.init_cluster().unwrap();
        let config =
            ObjectConfig { chunk_size_bytes, inline_max_bytes: 100, ..ObjectConfig::default() };
        let store = ObjectStore::with_chunks(
            Arc::clone(&group),
            Chunks::Replicated(chunks),
            Arc::new(Mutex::new(keys)),
            config,
        );
        store.create_tenant(tenant(), DedupMode::CrossTenant).await.unwrap();
        store.create_bucket(tenant(), "bucket").await.unwrap();
        Fixture { _pki: pki, _dir: dir, _group: group, store, client, nodes }
    }

    fn endpoints(&self) -> Vec<Endpoint> {
        self.nodes.iter().map(|node| node.endpoint.clone()).collect()
    }

    /// The chunk ids of `key`'s manifest.
    async fn chunk_ids(&self, key: &[u8]) -> Vec<ChunkId> {
        let manifest = self.store.manifest(tenant(), "bucket", key).await.unwrap();
        let ObjectBody::Chunks(chunks) = manifest.body else { panic!("an inline object") };
        chunks.iter().map(|chunk| ChunkId::from_bytes(chunk.id.0)).collect()
    }

    /// Waits until every running node holds `expected` chunks (a put's last replica may
    /// land after the put returned).
    async fn settle(&self, expected: u64) {
        for node in self.nodes.iter().filter(|node| node.engine.is_some()) {
            let deadline = tokio::time::Instant::now() + WAIT;
            let mut held = node.chunks_held().await;
            while held != expected && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
                held = node.chunks_held().await;
            }
            assert_eq!(held, expected, "{} holds {held} chunks", node.endpoint.node);
        }
    }
}

fn tenant() -> TenantId {
    TenantId::new([5; 16]).unwrap()
}

/// `len` bytes that differ at every position and per `seed`, so chunks never dedup.
fn body(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32).wrapping_mul(31).wrapping_add(u32::from(seed) * 7919).to_le_bytes()[1]
                ^ (i / 251) as u8
        })
        .collect()
}

fn no_user() -> UserMetadata {
    UserMetadata::default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_lives_on_every_replica_and_reads_back_with_one_node_down() {
    let mut f = Fixture::new(CHUNK, 64 << 10).await;
    let big = body(4 * CHUNK + 321, 1);
    f.store.put_object(tenant(), "bucket", b"big", &big, &no_user()).await.unwrap();
    let ids = f.chunk_ids(b"big").await;
    assert_eq!(ids.len(), 5, "4 full chunks and a short one");
    f.settle(5).await;
    for node in &f.nodes {
        let held = f.client.has_chunks(&node.endpoint, None, &ids).await.unwrap();
        assert_eq!(held, [true; 5], "{} lacks a chunk", node.endpoint.node);
    }

    // Stop the node the first chunk is read from first: reads fall back to the others.
    let endpoints = f.endpoints();
    let first = placement(&ids[0], &endpoints, 3)[0].node.clone();
    let stopped = f.nodes.iter().position(|node| node.endpoint.node == first).unwrap();
    f.nodes[stopped].stop().await;
    let (meta, got) = f.store.get_object(tenant(), "bucket", b"big", None).await.unwrap();
    assert_eq!((meta.size_bytes, got == big), (big.len() as u64, true), "the exact bytes");
    let range = (CHUNK as u64 - 5, 3 * CHUNK as u64 + 7);
    let (_, got) = f.store.get_object(tenant(), "bucket", b"big", Some(range)).await.unwrap();
    assert!(got == big[range.0 as usize..range.1 as usize], "a range across chunks");

    // Writes still reach W=2 of the three.
    let second = body(2 * CHUNK + 1, 2);
    f.store.put_object(tenant(), "bucket", b"second", &second, &no_user()).await.unwrap();
    let (_, got) = f.store.get_object(tenant(), "bucket", b"second", None).await.unwrap();
    assert!(got == second);
    f.settle(8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_write_quorum_a_put_fails_clearly_and_commits_nothing() {
    let mut f = Fixture::new(CHUNK, 64 << 10).await;
    f.nodes[0].stop().await;
    f.nodes[1].stop().await;
    let key = b"quorum-lost-object";
    let body = body(3 * CHUNK, 3);
    let error = f.store.put_object(tenant(), "bucket", key, &body, &no_user()).await.unwrap_err();
    let ObjectError::QuorumNotReached { acked, required } = error else {
        panic!("expected the quorum error, got {error:?}")
    };
    assert_eq!((acked, required), (1, 2), "only the live node took the first chunk");
    let message = error.to_string();
    assert!(!message.contains("bucket") && !message.contains("quorum-lost"), "{message}");

    // No manifest, and the one live node gave back the chunk it took.
    let head = f.store.head_object(tenant(), "bucket", key).await;
    assert!(matches!(head, Err(ObjectError::NoSuchKey)), "{head:?}");
    assert_eq!(f.nodes[2].chunks_held().await, 0);
    // An object too small for a chunk needs no replica: it is kept in its manifest.
    f.store.put_object(tenant(), "bucket", b"tiny", b"inline", &no_user()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwrites_and_deletes_release_chunks_on_the_live_replicas() {
    let mut f = Fixture::new(CHUNK, 64 << 10).await;
    let first = body(5 * CHUNK, 4);
    f.store.put_object(tenant(), "bucket", b"key", &first, &no_user()).await.unwrap();
    f.settle(5).await;
    let second = body(3 * CHUNK, 5);
    f.store.put_object(tenant(), "bucket", b"key", &second, &no_user()).await.unwrap();
    f.settle(3).await;
    let (_, got) = f.store.get_object(tenant(), "bucket", b"key", None).await.unwrap();
    assert!(got == second, "the overwrite's bytes");

    // A copy takes one more reference on each replica: its delete leaves the original.
    let copy =
        f.store.copy_object(tenant(), ("bucket", b"key"), ("bucket", b"copy"), None, |_| Ok(()));
    copy.await.unwrap();
    f.store.delete_object(tenant(), "bucket", b"copy").await.unwrap();
    f.settle(3).await;

    f.nodes[0].stop().await;
    f.store.delete_object(tenant(), "bucket", b"key").await.unwrap();
    f.settle(0).await;
    let gone = f.store.get_object(tenant(), "bucket", b"key", None).await;
    assert!(matches!(gone, Err(ObjectError::NoSuchKey)), "{gone:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multipart_upload_round_trips_and_an_abort_releases_its_parts() {
    // Parts but the last are at least 5 MiB: chunks of 60 KB keep them to ~90 chunks.
    let f = Fixture::new(60_000, 64 << 10).await;
    let user = no_user();
    let upload = f.store.create_upload(tenant(), "bucket", b"joined", &user).await.unwrap();
    let part_one = body(5 << 20, 6);
    let part_two = body(70_000, 7);
    let etag_one = f
        .store
        .upload_part(tenant(), "bucket", b"joined", &upload, 1, part_one.clone().into())
        .await
        .unwrap();
    let etag_two = f
        .store
        .upload_part(tenant(), "bucket", b"joined", &upload, 2, part_two.clone().into())
        .await
        .unwrap();
    let parts = [(1, hex(&etag_one)), (2, hex(&etag_two))];
    let completed =
        f.store.complete_upload(tenant(), "bucket", b"joined", &upload, &parts).await.unwrap();
    assert_eq!(completed.parts, 2);
    let (meta, got) = f.store.get_object(tenant(), "bucket", b"joined", None).await.unwrap();
    assert_eq!(meta.parts, Some(2));
    assert!(got.len() == part_one.len() + part_two.len(), "{} bytes", got.len());
    assert!(got[..part_one.len()] == part_one[..] && got[part_one.len()..] == part_two[..]);
    let joined = f.chunk_ids(b"joined").await.len() as u64;
    f.settle(joined).await;

    // An aborted upload's part is released on every replica.
    let aborted = f.store.create_upload(tenant(), "bucket", b"dropped", &user).await.unwrap();
    let part = body(200_000, 8);
    f.store
        .upload_part(tenant(), "bucket", b"dropped", &aborted, 1, part.clone().into())
        .await
        .unwrap();
    f.settle(joined + 4).await;
    f.store.abort_upload(tenant(), "bucket", b"dropped", &aborted).await.unwrap();
    f.settle(joined).await;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
