//! Test doubles for the selector, client and replication tests: in-memory chunk nodes, and
//! transports that reach them and fail on command, deterministically.
//!
//! A [`ScriptedTransport`] of either kind serves requests from the same [`MemoryNode`]s
//! (as TCP and RDMA reach the same server). Each (transport, node) has a [`Fault`]:
//! refuse before delivery, lose the connection after the node applied the request, hang,
//! or answer a get with another chunk's envelope.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use kiseki_proto::{ChunkRequest, HasChunksBitmap, Op, Status};
use kiseki_security::{ChunkId, ChunkTenant, Envelope, MasterKey};

use crate::transport::{
    BoxFuture, Endpoint, FabricRequest, FabricResponse, Transport, TransportError, TransportKind,
};

/// A chunk store that serves the chunk ops, counting references per chunk.
#[derive(Debug, Default)]
pub(crate) struct MemoryNode {
    chunks: Mutex<HashMap<[u8; 32], Stored>>,
}

/// A stored envelope's bytes and its reference count.
type Stored = (Vec<u8>, u32);

impl MemoryNode {
    /// How many puts of `id` this node applied (0 = never stored).
    pub(crate) fn references(&self, id: &ChunkId) -> u32 {
        self.chunks.lock().unwrap().get(id.as_bytes()).map_or(0, |(_, refs)| *refs)
    }

    pub(crate) fn insert_raw(&self, id: &ChunkId, bytes: Vec<u8>) {
        self.chunks.lock().unwrap().insert(*id.as_bytes(), (bytes, 1));
    }

    fn serve(&self, request: &FabricRequest) -> FabricResponse {
        let ok = |payload| FabricResponse::new(Status::Ok, payload);
        if request.op == Op::Ping {
            return ok(Vec::new());
        }
        let Ok(decoded) = ChunkRequest::decode(request.op, &request.payload) else {
            return FabricResponse::new(Status::BadRequest, b"bad".to_vec());
        };
        let mut chunks = self.chunks.lock().unwrap();
        match decoded {
            ChunkRequest::Put { envelope, .. } => {
                let parsed = Envelope::parse(envelope).expect("tests put real envelopes");
                let entry = chunks.entry(*parsed.chunk_id().as_bytes()).or_default();
                entry.0 = envelope.to_vec();
                entry.1 += 1;
                ok(Vec::new())
            }
            ChunkRequest::Get { chunk_id, .. } => match chunks.get(&chunk_id) {
                Some((bytes, _)) => ok(bytes.clone()),
                None => FabricResponse::new(Status::NotFound, Vec::new()),
            },
            ChunkRequest::Has { .. } => {
                let held: Vec<bool> =
                    decoded.chunk_ids().map(|id| chunks.contains_key(&id)).collect();
                let mut payload = Vec::new();
                HasChunksBitmap::encode_into(held.into_iter(), &mut payload);
                ok(payload)
            }
            ChunkRequest::Release { chunk_id, .. } => {
                let Some((_, refs)) = chunks.get_mut(&chunk_id) else {
                    return FabricResponse::new(Status::NotFound, Vec::new());
                };
                *refs -= 1;
                if *refs == 0 {
                    chunks.remove(&chunk_id);
                }
                ok(Vec::new())
            }
        }
    }
}

/// What a scripted transport does with a request to one node.
#[derive(Debug, Clone)]
pub(crate) enum Fault {
    /// Fails with this error without delivering the request.
    Refuse(TransportError),
    /// Delivers the request (the node applies it), then fails with this error.
    LoseAfterDelivery(TransportError),
    /// Never resolves.
    Hang,
}

/// Nodes by name, shared by the transports of a test.
pub(crate) type Nodes = Arc<HashMap<String, Arc<MemoryNode>>>;

#[derive(Debug)]
pub(crate) struct ScriptedTransport {
    kind: TransportKind,
    nodes: Nodes,
    faults: Mutex<HashMap<String, Fault>>,
    calls: AtomicU64,
}

impl ScriptedTransport {
    pub(crate) fn new(kind: TransportKind, nodes: Nodes) -> Arc<ScriptedTransport> {
        Arc::new(ScriptedTransport {
            kind,
            nodes,
            faults: Mutex::new(HashMap::new()),
            calls: AtomicU64::new(0),
        })
    }

    pub(crate) fn fail(&self, node: &str, fault: Fault) {
        self.faults.lock().unwrap().insert(node.to_owned(), fault);
    }

    pub(crate) fn heal(&self, node: &str) {
        self.faults.lock().unwrap().remove(node);
    }

    /// Requests this transport was handed.
    pub(crate) fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
}

impl Transport for ScriptedTransport {
    fn kind(&self) -> TransportKind {
        self.kind
    }

    fn call<'a>(
        &'a self,
        peer: &'a Endpoint,
        request: FabricRequest,
    ) -> BoxFuture<'a, Result<FabricResponse, TransportError>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let fault = self.faults.lock().unwrap().get(&peer.node).cloned();
        let node = self.nodes.get(&peer.node).cloned();
        // What a node receives: the whole payload in one buffer, as off the wire.
        let request = request.into_contiguous();
        Box::pin(async move {
            let Some(node) = node else {
                return Err(connect_refused(&peer.node));
            };
            match fault {
                None => Ok(node.serve(&request)),
                Some(Fault::Refuse(error)) => Err(error),
                Some(Fault::LoseAfterDelivery(error)) => {
                    node.serve(&request);
                    Err(error)
                }
                Some(Fault::Hang) => std::future::pending().await,
            }
        })
    }
}

pub(crate) fn connect_refused(node: &str) -> TransportError {
    TransportError::Connect { peer: node.to_owned(), reason: "connection refused".into() }
}

pub(crate) fn connection_lost(node: &str) -> TransportError {
    TransportError::ConnectionLost { peer: node.to_owned(), reason: "reset by peer".into() }
}

pub(crate) fn nodes(names: &[&str]) -> Nodes {
    Arc::new(names.iter().map(|name| (name.to_string(), Arc::default())).collect())
}

pub(crate) fn endpoint(node: &str) -> Endpoint {
    Endpoint {
        node: node.to_owned(),
        addr: "127.0.0.1:7000".parse().unwrap(),
        server_name: node.to_owned(),
    }
}

/// A real sealed envelope of `plaintext` (shared tenancy, a fresh master key).
pub(crate) fn envelope(plaintext: &[u8]) -> Envelope {
    let master = MasterKey::generate(1).unwrap();
    Envelope::seal_chunk(plaintext, &master, ChunkTenant::Shared).unwrap()
}
