//! `--listen --memory`: a chunk handler that keeps envelopes in a bounded in-memory map, so
//! that a run measures the network path (TCP, TLS, framing, the fabric's connections)
//! alone.
//!
//! It answers the chunk service's ops with the chunk service's payloads and statuses, for
//! peers with the server role only (every other role is denied, as the chunk service does
//! for node-to-node calls). A put stores its envelope, or counts one more reference to a
//! chunk already held; a get returns the envelope; has-chunks answers a bitmap.
//!
//! What it does not do, to stay out of the measurement: parse envelopes fully (it checks
//! the magic and the length and reads the chunk id at its place in the envelope's byte map;
//! the client checks every envelope it gets back), copy a put's payload (it keeps the
//! request's buffer and the envelope's offset in it) or a get's answer (the response shares
//! the stored buffer), or ever release a chunk.
//!
//! Invariant: the envelope bytes held never exceed the capacity; a put of a new chunk that
//! would exceed it is refused as `Unavailable` and stores nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use kiseki_fabric::{BoxFuture, FabricRequest, FabricResponse, Handler, Peer, SharedBytes};
use kiseki_proto::{ChunkRequest, HasChunksBitmap, Op, Status, error_message};
use kiseki_security::Role;
use kiseki_security::constants::{CHUNK_ID_LEN, ENVELOPE_MAGIC, TAG_LEN};

/// Where the chunk id sits in an envelope (format version 1; see `kiseki_security`'s
/// envelope byte map). A unit test checks it against a sealed envelope.
const ENVELOPE_CHUNK_ID_OFFSET: usize = 28;
/// The fixed header and the tag: no envelope is shorter.
const ENVELOPE_MIN_BYTES: usize = 84 + TAG_LEN;

/// The in-memory chunk store and its handler; see the module's notes.
#[derive(Debug)]
pub struct MemoryStore {
    capacity_bytes: u64,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    held_bytes: u64,
    chunks: HashMap<[u8; CHUNK_ID_LEN], Stored>,
}

/// A stored envelope and its references.
#[derive(Debug)]
struct Stored {
    envelope: Arc<PutPayload>,
    references: u64,
}

/// A put request's payload, whose bytes from `offset` on are the envelope.
#[derive(Debug)]
struct PutPayload {
    payload: Vec<u8>,
    offset: usize,
}

impl AsRef<[u8]> for PutPayload {
    fn as_ref(&self) -> &[u8] {
        &self.payload[self.offset..]
    }
}

/// What the store holds, for the listener's closing line and for tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryStats {
    pub chunks: usize,
    pub held_bytes: u64,
    pub references: u64,
}

impl MemoryStore {
    /// An empty store that holds at most `capacity_bytes` of envelopes.
    pub fn new(capacity_bytes: u64) -> MemoryStore {
        MemoryStore { capacity_bytes, state: Mutex::new(State::default()) }
    }

    pub fn stats(&self) -> MemoryStats {
        let state = self.lock();
        MemoryStats {
            chunks: state.chunks.len(),
            held_bytes: state.held_bytes,
            references: state.chunks.values().map(|stored| stored.references).sum(),
        }
    }

    fn serve(&self, peer: &Peer, request: FabricRequest) -> FabricResponse {
        if peer.identity.role() != Some(&Role::Server) {
            return status_response(Status::Denied);
        }
        match request.op {
            Op::Ping => ok(Vec::new()),
            Op::PutChunk => self.put(request.payload),
            Op::GetChunk | Op::HasChunks => self.read(request.op, &request.payload),
            // RDMA setup and whatever else the fabric learns: not a chunk op.
            #[allow(unreachable_patterns, reason = "future ops of kiseki_proto")]
            _ => status_response(Status::BadRequest),
        }
    }

    fn put(&self, payload: Vec<u8>) -> FabricResponse {
        let envelope = match ChunkRequest::decode(Op::PutChunk, &payload) {
            Ok(ChunkRequest::Put { envelope, .. }) => envelope,
            _ => return status_response(Status::BadRequest),
        };
        let Some(chunk_id) = chunk_id_of(envelope) else {
            return status_response(Status::BadRequest);
        };
        let (offset, len_bytes) = (payload.len() - envelope.len(), envelope.len() as u64);
        let mut state = self.lock();
        if let Some(stored) = state.chunks.get_mut(&chunk_id) {
            stored.references += 1;
            return ok(Vec::new());
        }
        if state.held_bytes + len_bytes > self.capacity_bytes {
            return status_response(Status::Unavailable);
        }
        state.held_bytes += len_bytes;
        let stored = Stored { envelope: Arc::new(PutPayload { payload, offset }), references: 1 };
        state.chunks.insert(chunk_id, stored);
        drop(state);
        ok(Vec::new())
    }

    fn read(&self, op: Op, payload: &[u8]) -> FabricResponse {
        match ChunkRequest::decode(op, payload) {
            Ok(ChunkRequest::Get { chunk_id, .. }) => {
                let found = self.lock().chunks.get(&chunk_id).map(|s| Arc::clone(&s.envelope));
                match found {
                    Some(envelope) => FabricResponse {
                        status: Status::Ok,
                        payload: Vec::new(),
                        shared: Some(SharedBytes::new(envelope)),
                    },
                    None => status_response(Status::NotFound),
                }
            }
            Ok(request @ ChunkRequest::Has { .. }) => {
                let state = self.lock();
                let held: Vec<bool> =
                    request.chunk_ids().map(|id| state.chunks.contains_key(&id)).collect();
                drop(state);
                let mut answer = Vec::with_capacity(held.len().div_ceil(8));
                HasChunksBitmap::encode_into(held.into_iter(), &mut answer);
                ok(answer)
            }
            _ => status_response(Status::BadRequest),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Handler for MemoryStore {
    fn handle<'a>(
        &'a self,
        peer: &'a Peer,
        request: FabricRequest,
    ) -> BoxFuture<'a, FabricResponse> {
        Box::pin(async move { self.serve(peer, request) })
    }
}

/// The chunk id an envelope names, if it looks like one (magic and minimal length).
fn chunk_id_of(envelope: &[u8]) -> Option<[u8; CHUNK_ID_LEN]> {
    if envelope.len() < ENVELOPE_MIN_BYTES || envelope[..4] != ENVELOPE_MAGIC {
        return None;
    }
    let id = &envelope[ENVELOPE_CHUNK_ID_OFFSET..ENVELOPE_CHUNK_ID_OFFSET + CHUNK_ID_LEN];
    Some(id.try_into().expect("CHUNK_ID_LEN bytes"))
}

fn ok(payload: Vec<u8>) -> FabricResponse {
    FabricResponse::new(Status::Ok, payload)
}

/// A response with `status` and its generic word, as the chunk service answers.
fn status_response(status: Status) -> FabricResponse {
    let payload = error_message(&status.to_string()).as_bytes().to_vec();
    FabricResponse::new(status, payload)
}

#[cfg(test)]
mod tests {
    use kiseki_proto::TenantRef;
    use kiseki_security::{
        CertificateAuthority, ChunkId, Dek, Envelope, IdentityRules, IssueRequest, MasterKey,
        OrgId, PeerIdentity, SealParams, Validity,
    };

    use super::*;

    fn sealed(key: u8, len_bytes: usize) -> Envelope {
        let plaintext = vec![key; len_bytes];
        let chunk_id = ChunkId::of_plaintext(&plaintext);
        let dek = Dek::derive(&MasterKey::generate(1).unwrap(), &chunk_id, None);
        Envelope::seal(&plaintext, &SealParams::new(&dek)).unwrap()
    }

    fn peer(role: Role) -> Peer {
        let ca = CertificateAuthority::generate("test CA", Validity::days_from_now(1)).unwrap();
        let request = IssueRequest {
            role,
            common_name: "peer".to_owned(),
            spiffe_id: None,
            subject_alt_names: Vec::new(),
            validity: Validity::days_from_now(1),
        };
        let issued = ca.issue(&request).unwrap();
        let identity =
            PeerIdentity::from_der(issued.certificate_der(), &IdentityRules::default()).unwrap();
        Peer { identity, addr: None }
    }

    fn request(request: ChunkRequest<'_>) -> FabricRequest {
        let mut payload = Vec::new();
        request.encode_into(&mut payload);
        FabricRequest::new(request.op(), payload)
    }

    fn put(envelope: &Envelope) -> FabricRequest {
        request(ChunkRequest::Put { tenant: TenantRef::NONE, envelope: envelope.as_bytes() })
    }

    fn get(envelope: &Envelope) -> FabricRequest {
        let chunk_id = *envelope.chunk_id().as_bytes();
        request(ChunkRequest::Get { tenant: TenantRef::NONE, chunk_id })
    }

    #[test]
    fn the_chunk_id_offset_is_the_envelopes() {
        let envelope = sealed(7, 100);
        let id = chunk_id_of(envelope.as_bytes()).unwrap();
        assert_eq!(id, *envelope.chunk_id().as_bytes());
        assert_eq!(Envelope::sealed_len(0, 0), ENVELOPE_MIN_BYTES);
    }

    #[test]
    fn put_stores_and_counts_and_get_returns_the_envelope() {
        let store = MemoryStore::new(1 << 20);
        let node = peer(Role::Server);
        let envelope = sealed(1, 5000);
        assert_eq!(store.serve(&node, get(&envelope)).status, Status::NotFound);
        for _ in 0..2 {
            assert_eq!(store.serve(&node, put(&envelope)).status, Status::Ok);
        }
        let stats = store.stats();
        assert_eq!((stats.chunks, stats.references), (1, 2));
        assert_eq!(stats.held_bytes, envelope.len() as u64, "a second put stores nothing");
        let answer = store.serve(&node, get(&envelope));
        assert_eq!(answer.status, Status::Ok);
        assert!(answer.payload.is_empty(), "the answer shares the stored envelope");
        assert_eq!(answer.into_contiguous().payload, envelope.as_bytes());
    }

    #[test]
    fn has_answers_one_flag_per_id() {
        let store = MemoryStore::new(1 << 20);
        let node = peer(Role::Server);
        let (held, absent) = (sealed(1, 10), sealed(2, 10));
        store.serve(&node, put(&held));
        let ids = [*absent.chunk_id().as_bytes(), *held.chunk_id().as_bytes()].concat();
        let answer = store
            .serve(&node, request(ChunkRequest::Has { tenant: TenantRef::NONE, chunk_ids: &ids }));
        assert_eq!(answer.status, Status::Ok);
        assert_eq!(answer.payload, [0b10], "bit i for id i, LSB first");
    }

    #[test]
    fn the_capacity_bounds_what_it_holds() {
        let first = sealed(1, 1000);
        let store = MemoryStore::new(first.len() as u64 + 500);
        let node = peer(Role::Server);
        assert_eq!(store.serve(&node, put(&first)).status, Status::Ok);
        let answer = store.serve(&node, put(&sealed(2, 1000)));
        assert_eq!(answer.status, Status::Unavailable);
        assert_eq!(store.stats().chunks, 1);
        // Another reference to a chunk held needs no room.
        assert_eq!(store.serve(&node, put(&first)).status, Status::Ok);
    }

    #[test]
    fn malformed_requests_and_other_roles_are_refused() {
        let store = MemoryStore::new(1 << 20);
        let node = peer(Role::Server);
        let not_an_envelope =
            request(ChunkRequest::Put { tenant: TenantRef::NONE, envelope: b"x" });
        assert_eq!(store.serve(&node, not_an_envelope).status, Status::BadRequest);
        let truncated = FabricRequest::new(Op::GetChunk, vec![0, 1, 2]);
        assert_eq!(store.serve(&node, truncated).status, Status::BadRequest);
        let tenant = peer(Role::Workload { org: OrgId::parse("acme").unwrap() });
        let envelope = sealed(3, 10);
        assert_eq!(store.serve(&tenant, put(&envelope)).status, Status::Denied);
        let ping = FabricRequest::new(Op::Ping, Vec::new());
        assert_eq!(store.serve(&peer(Role::ClusterAdmin), ping).status, Status::Denied);
        assert_eq!(store.stats().chunks, 0);
    }
}
