//! The chunk client: the library API the gateway, the bench and HPC clients use to put,
//! get, look up and release chunks on one node over the fabric.
//!
//! What it does: encodes chunk-service requests (`kiseki_proto::ChunkRequest`), sends them
//! through the [`FabricSelector`], and turns every response status and transport failure
//! into a typed [`ClientError`]. A chunk comes back as an [`Envelope`] only after it parsed
//! as one and names the chunk id asked for; anything else is [`ClientError::Integrity`].
//!
//! What it does not do: open envelopes (the caller holds the key, or the node does),
//! placement or replication (`replication.rs`), or retries beyond the selector's transport
//! fallback (a put is never sent twice by this layer).
//!
//! Invariants:
//! - every request it builds decodes on the server (the proto crate's encoders, a tenant
//!   from an already-validated [`OrgId`]);
//! - a has-chunks request never asks about more than `HAS_CHUNKS_IDS_MAX` ids, and the
//!   answer has exactly one flag per id asked.

use std::fmt;
use std::sync::Arc;

use kiseki_proto::constants::HAS_CHUNKS_IDS_MAX;
use kiseki_proto::{
    ChunkRequest, ChunkResponse, Op, PayloadError, Status, TenantRef, decode_error_message,
};
use kiseki_security::{ChunkId, Envelope, OrgId};

use crate::selector::{FabricSelector, SelectorError};
use crate::transport::{Endpoint, FabricRequest, FabricResponse, SharedBytes};

/// Puts, gets, looks up and releases chunks on one node at a time. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ChunkClient {
    selector: Arc<FabricSelector>,
}

/// Why a chunk request failed. Status errors name the peer that answered; security ones
/// (`NotFound`, `Denied`) say no more than the node did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientError {
    /// No such chunk on the node, or none the caller may see.
    NotFound { peer: String },
    /// The caller's identity may not make this request.
    Denied { peer: String },
    /// The node could not decode the request.
    BadRequest { peer: String, message: String },
    /// The node's queue is full; retry later.
    Busy { peer: String },
    /// The node cannot store now (capacity, failed device); another replica may.
    Unavailable { peer: String, message: String },
    /// The node reported a failed integrity check, or what it sent is not a well-formed
    /// envelope of the chunk asked for.
    Integrity { peer: String, reason: String },
    /// The node failed otherwise.
    Internal { peer: String, message: String },
    /// The response does not decode as an answer to the request.
    Protocol { peer: String, reason: String },
    /// More chunk ids than one has-chunks request may carry.
    TooManyIds { count: usize, max: u32 },
    /// No response: the transports failed or their breakers are open.
    Fabric(SelectorError),
}

impl ChunkClient {
    pub fn new(selector: Arc<FabricSelector>) -> ChunkClient {
        ChunkClient { selector }
    }

    pub fn selector(&self) -> &Arc<FabricSelector> {
        &self.selector
    }

    /// Stores `envelope` on `peer`, on behalf of `tenant` (a tenant caller's own org, or
    /// the tenant a node replicates for), or of no tenant (node-to-node). `Ok` means the
    /// node acknowledged it durable. The envelope is shared, not copied, into the request
    /// (and into its retry on a fallback transport).
    pub async fn put_chunk(
        &self,
        peer: &Endpoint,
        tenant: Option<&OrgId>,
        envelope: &Arc<Envelope>,
    ) -> Result<(), ClientError> {
        self.put_request(peer, put_request(tenant, envelope)).await
    }

    /// Reads chunk `chunk_id` from `peer`: its envelope, parsed and checked to name
    /// `chunk_id`.
    pub async fn get_chunk(
        &self,
        peer: &Endpoint,
        tenant: Option<&OrgId>,
        chunk_id: &ChunkId,
    ) -> Result<Envelope, ClientError> {
        let request =
            ChunkRequest::Get { tenant: tenant_ref(tenant), chunk_id: *chunk_id.as_bytes() };
        let response = self.send(peer, request).await?;
        let payload = ok_payload(peer, Op::GetChunk, response)?;
        let protocol = |error: PayloadError| protocol_error(peer, error);
        ChunkResponse::decode(Op::GetChunk, &payload, 0).map_err(protocol)?;
        let envelope = Envelope::parse_owned(payload).map_err(|error| ClientError::Integrity {
            peer: peer.node.clone(),
            reason: format!("the answer is not an envelope: {error}"),
        })?;
        if envelope.chunk_id() != *chunk_id {
            return Err(ClientError::Integrity {
                peer: peer.node.clone(),
                reason: format!("asked for chunk {chunk_id}, got chunk {}", envelope.chunk_id()),
            });
        }
        Ok(envelope)
    }

    /// Which of `chunk_ids` `peer` holds (and the caller may see): one flag per id, in
    /// order. An empty list asks nothing.
    pub async fn has_chunks(
        &self,
        peer: &Endpoint,
        tenant: Option<&OrgId>,
        chunk_ids: &[ChunkId],
    ) -> Result<Vec<bool>, ClientError> {
        if chunk_ids.is_empty() {
            return Ok(Vec::new());
        }
        if chunk_ids.len() > HAS_CHUNKS_IDS_MAX as usize {
            return Err(ClientError::TooManyIds {
                count: chunk_ids.len(),
                max: HAS_CHUNKS_IDS_MAX,
            });
        }
        let ids: Vec<u8> = chunk_ids.iter().flat_map(|id| *id.as_bytes()).collect();
        let request = ChunkRequest::Has { tenant: tenant_ref(tenant), chunk_ids: &ids };
        let response = self.send(peer, request).await?;
        let payload = ok_payload(peer, Op::HasChunks, response)?;
        let answer = ChunkResponse::decode(Op::HasChunks, &payload, chunk_ids.len())
            .map_err(|error| protocol_error(peer, error))?;
        let ChunkResponse::Has(bitmap) = answer else {
            unreachable!("a has-chunks answer decodes as a bitmap")
        };
        Ok((0..chunk_ids.len()).map(|index| bitmap.holds(index)).collect())
    }

    /// Drops one reference to `chunk_id` on `peer`, on behalf of `tenant` as the put it
    /// undoes named it (a tenant caller's own org; for a node, the org it put for, or
    /// none). `NotFound` when the node holds no such reference for the caller. Never sent
    /// twice by this layer: a release is not idempotent.
    pub async fn release_chunk(
        &self,
        peer: &Endpoint,
        tenant: Option<&OrgId>,
        chunk_id: &ChunkId,
    ) -> Result<(), ClientError> {
        let request =
            ChunkRequest::Release { tenant: tenant_ref(tenant), chunk_id: *chunk_id.as_bytes() };
        let response = self.send(peer, request).await?;
        let payload = ok_payload(peer, Op::ReleaseChunk, response)?;
        ChunkResponse::decode(Op::ReleaseChunk, &payload, 0)
            .map_err(|error| protocol_error(peer, error))?;
        Ok(())
    }

    /// A round trip with an empty payload: liveness, and the selector's breaker probe.
    pub async fn ping(&self, peer: &Endpoint) -> Result<(), ClientError> {
        let request = FabricRequest::new(Op::Ping, Vec::new());
        let response = self.selector.call(peer, request).await.map_err(ClientError::Fabric)?;
        ok_payload(peer, Op::Ping, response).map(drop)
    }

    /// Sends a put request (replicated writes make one per target, sharing the envelope).
    pub(crate) async fn put_request(
        &self,
        peer: &Endpoint,
        request: FabricRequest,
    ) -> Result<(), ClientError> {
        let response = self.selector.call(peer, request).await.map_err(ClientError::Fabric)?;
        let payload = ok_payload(peer, Op::PutChunk, response)?;
        ChunkResponse::decode(Op::PutChunk, &payload, 0)
            .map_err(|error| protocol_error(peer, error))?;
        Ok(())
    }

    async fn send(
        &self,
        peer: &Endpoint,
        request: ChunkRequest<'_>,
    ) -> Result<FabricResponse, ClientError> {
        let mut payload = Vec::with_capacity(request.encoded_len());
        request.encode_into(&mut payload);
        let request = FabricRequest::new(request.op(), payload);
        self.selector.call(peer, request).await.map_err(ClientError::Fabric)
    }
}

/// A put request for `envelope`: the payload is the encoded tenant reference, and the
/// envelope (which the wire format puts last) follows it as shared bytes.
pub(crate) fn put_request(tenant: Option<&OrgId>, envelope: &Arc<Envelope>) -> FabricRequest {
    let request = ChunkRequest::Put { tenant: tenant_ref(tenant), envelope: &[] };
    let mut payload = Vec::with_capacity(request.encoded_len());
    request.encode_into(&mut payload);
    let shared = Some(SharedBytes::new(Arc::clone(envelope)));
    FabricRequest { op: Op::PutChunk, payload, shared }
}

fn tenant_ref(tenant: Option<&OrgId>) -> TenantRef<'_> {
    match tenant {
        None => TenantRef::NONE,
        // An OrgId is a DNS label: a subset of what a TenantRef accepts.
        Some(org) => TenantRef::org(org.as_str()).expect("an OrgId is a valid tenant ref"),
    }
}

/// The payload of an `Ok` response, or the error its status stands for.
fn ok_payload(peer: &Endpoint, op: Op, response: FabricResponse) -> Result<Vec<u8>, ClientError> {
    let FabricResponse { status, payload, .. } = response.into_contiguous();
    if status == Status::Ok {
        return Ok(payload);
    }
    let peer = peer.node.clone();
    let message = match decode_error_message(&payload) {
        Ok(message) => message.to_owned(),
        Err(_) => String::from("(unreadable message)"),
    };
    Err(match status {
        Status::Ok => unreachable!("handled above"),
        Status::NotFound => ClientError::NotFound { peer },
        Status::Denied => ClientError::Denied { peer },
        Status::BadRequest => ClientError::BadRequest { peer, message },
        Status::Busy => ClientError::Busy { peer },
        Status::Unavailable => ClientError::Unavailable { peer, message },
        Status::Integrity => ClientError::Integrity { peer, reason: message },
        Status::Internal => ClientError::Internal { peer, message: format!("{op:?}: {message}") },
    })
}

fn protocol_error(peer: &Endpoint, error: PayloadError) -> ClientError {
    ClientError::Protocol { peer: peer.node.clone(), reason: error.to_string() }
}

impl ClientError {
    /// The node that answered or failed, when one is known.
    pub fn peer(&self) -> Option<&str> {
        match self {
            ClientError::NotFound { peer }
            | ClientError::Denied { peer }
            | ClientError::BadRequest { peer, .. }
            | ClientError::Busy { peer }
            | ClientError::Unavailable { peer, .. }
            | ClientError::Integrity { peer, .. }
            | ClientError::Internal { peer, .. }
            | ClientError::Protocol { peer, .. } => Some(peer),
            ClientError::TooManyIds { .. } => None,
            ClientError::Fabric(error) => match error {
                SelectorError::CircuitOpen { peer }
                | SelectorError::OutcomeUnknown { peer, .. }
                | SelectorError::Failed { peer, .. } => Some(peer),
                _ => None,
            },
        }
    }
}

impl From<SelectorError> for ClientError {
    fn from(error: SelectorError) -> Self {
        ClientError::Fabric(error)
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::NotFound { peer } => write!(f, "{peer}: chunk not found"),
            ClientError::Denied { peer } => write!(f, "{peer}: access denied"),
            ClientError::BadRequest { peer, message } => {
                write!(f, "{peer}: bad request: {message}")
            }
            ClientError::Busy { peer } => write!(f, "{peer}: busy, retry later"),
            ClientError::Unavailable { peer, message } => {
                write!(f, "{peer}: unavailable: {message}")
            }
            ClientError::Integrity { peer, reason } => {
                write!(f, "{peer}: integrity failure: {reason}")
            }
            ClientError::Internal { peer, message } => {
                write!(f, "{peer}: internal error: {message}")
            }
            ClientError::Protocol { peer, reason } => {
                write!(f, "{peer}: malformed response: {reason}")
            }
            ClientError::TooManyIds { count, max } => {
                write!(f, "{count} chunk ids in one has-chunks request; at most {max}")
            }
            ClientError::Fabric(error) => error.fmt(f),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Fabric(error) => Some(error),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use kiseki_proto::constants::ERROR_MESSAGE_MAX_BYTES;

    use super::*;
    use crate::breaker::BreakerConfig;
    use crate::testing::{
        Fault, Nodes, ScriptedTransport, connect_refused, endpoint, envelope, nodes,
    };
    use crate::transport::{BoxFuture, Transport, TransportError, TransportKind};

    fn client(nodes: &Nodes) -> (ChunkClient, Arc<ScriptedTransport>) {
        let tcp = ScriptedTransport::new(TransportKind::Tcp, nodes.clone());
        let selector = FabricSelector::new(tcp.clone(), BreakerConfig::default()).unwrap();
        (ChunkClient::new(Arc::new(selector)), tcp)
    }

    fn org() -> OrgId {
        OrgId::parse("acme").unwrap()
    }

    #[tokio::test]
    async fn put_get_and_has_round_trip() {
        let nodes = nodes(&["a"]);
        let (client, _) = client(&nodes);
        let a = endpoint("a");
        let stored = envelope(b"round trip");
        let absent = envelope(b"never stored");
        client.put_chunk(&a, Some(&org()), &Arc::new(stored.clone())).await.unwrap();
        let read = client.get_chunk(&a, Some(&org()), &stored.chunk_id()).await.unwrap();
        assert_eq!(read, stored);
        let ids = [stored.chunk_id(), absent.chunk_id(), stored.chunk_id()];
        assert_eq!(client.has_chunks(&a, None, &ids).await.unwrap(), [true, false, true]);
        assert_eq!(client.has_chunks(&a, None, &[]).await.unwrap(), Vec::<bool>::new());
        client.ping(&a).await.unwrap();
        client.release_chunk(&a, Some(&org()), &stored.chunk_id()).await.unwrap();
        assert_eq!(nodes["a"].references(&stored.chunk_id()), 0, "the one reference dropped");
        let error = client.release_chunk(&a, None, &stored.chunk_id()).await.unwrap_err();
        assert_eq!(error, ClientError::NotFound { peer: "a".into() }, "nothing left to drop");
    }

    #[tokio::test]
    async fn an_absent_chunk_is_not_found() {
        let nodes = nodes(&["a"]);
        let (client, _) = client(&nodes);
        let id = envelope(b"absent").chunk_id();
        let error = client.get_chunk(&endpoint("a"), None, &id).await.unwrap_err();
        assert_eq!(error, ClientError::NotFound { peer: "a".into() });
    }

    #[tokio::test]
    async fn another_chunks_envelope_is_an_integrity_error() {
        let nodes = nodes(&["a"]);
        let (client, _) = client(&nodes);
        let asked = envelope(b"asked for");
        let other = envelope(b"something else");
        nodes["a"].insert_raw(&asked.chunk_id(), other.as_bytes().to_vec());
        let error = client.get_chunk(&endpoint("a"), None, &asked.chunk_id()).await.unwrap_err();
        let ClientError::Integrity { reason, .. } = &error else { panic!("{error:?}") };
        assert!(reason.contains(&asked.chunk_id().to_string()), "{reason}");
    }

    #[tokio::test]
    async fn bytes_that_are_not_an_envelope_are_an_integrity_error() {
        let nodes = nodes(&["a"]);
        let (client, _) = client(&nodes);
        let asked = envelope(b"asked for");
        let mut corrupt = asked.as_bytes().to_vec();
        corrupt.truncate(40);
        nodes["a"].insert_raw(&asked.chunk_id(), corrupt);
        let error = client.get_chunk(&endpoint("a"), None, &asked.chunk_id()).await.unwrap_err();
        assert!(matches!(error, ClientError::Integrity { .. }), "{error:?}");
    }

    #[tokio::test]
    async fn too_many_ids_are_refused_before_sending() {
        let nodes = nodes(&["a"]);
        let (client, tcp) = client(&nodes);
        let ids = vec![envelope(b"x").chunk_id(); HAS_CHUNKS_IDS_MAX as usize + 1];
        let error = client.has_chunks(&endpoint("a"), None, &ids).await.unwrap_err();
        assert!(matches!(error, ClientError::TooManyIds { .. }), "{error:?}");
        assert_eq!(tcp.calls(), 0);
    }

    #[tokio::test]
    async fn a_transport_failure_is_a_fabric_error() {
        let nodes = nodes(&["a"]);
        let (client, tcp) = client(&nodes);
        tcp.fail("a", Fault::Refuse(connect_refused("a")));
        let error = client.ping(&endpoint("a")).await.unwrap_err();
        assert!(matches!(error, ClientError::Fabric(SelectorError::Failed { .. })), "{error:?}");
        assert_eq!(error.peer(), Some("a"));
    }

    /// Answers every request with one status and message.
    #[derive(Debug)]
    struct Answering(Status, Vec<u8>);

    impl Transport for Answering {
        fn kind(&self) -> TransportKind {
            TransportKind::Tcp
        }

        fn call<'a>(
            &'a self,
            _peer: &'a Endpoint,
            _request: FabricRequest,
        ) -> BoxFuture<'a, Result<FabricResponse, TransportError>> {
            let response = FabricResponse::new(self.0, self.1.clone());
            Box::pin(async move { Ok(response) })
        }
    }

    async fn answered(status: Status, message: &[u8]) -> ClientError {
        let transport = Arc::new(Answering(status, message.to_vec()));
        let selector = FabricSelector::new(transport, BreakerConfig::default()).unwrap();
        let client = ChunkClient::new(Arc::new(selector));
        let id = envelope(b"x").chunk_id();
        client.get_chunk(&endpoint("n"), None, &id).await.unwrap_err()
    }

    #[tokio::test]
    async fn every_error_status_maps_to_its_error() {
        let peer = || String::from("n");
        let message = || String::from("disk full");
        let cases = [
            (Status::NotFound, ClientError::NotFound { peer: peer() }),
            (Status::Denied, ClientError::Denied { peer: peer() }),
            (Status::BadRequest, ClientError::BadRequest { peer: peer(), message: message() }),
            (Status::Busy, ClientError::Busy { peer: peer() }),
            (Status::Unavailable, ClientError::Unavailable { peer: peer(), message: message() }),
            (Status::Integrity, ClientError::Integrity { peer: peer(), reason: message() }),
            (
                Status::Internal,
                ClientError::Internal { peer: peer(), message: "GetChunk: disk full".into() },
            ),
        ];
        for (status, expected) in cases {
            assert_eq!(answered(status, b"disk full").await, expected, "{status}");
        }
        let unreadable = answered(Status::Internal, &[0xff; ERROR_MESSAGE_MAX_BYTES + 1]).await;
        assert!(unreadable.to_string().contains("unreadable"), "{unreadable}");
    }

    #[tokio::test]
    async fn a_malformed_ok_answer_is_a_protocol_error() {
        let transport = Arc::new(Answering(Status::Ok, vec![1, 2, 3]));
        let selector = FabricSelector::new(transport, BreakerConfig::default()).unwrap();
        let client = ChunkClient::new(Arc::new(selector));
        let ids = [envelope(b"x").chunk_id()];
        let error = client.has_chunks(&endpoint("n"), None, &ids).await.unwrap_err();
        assert!(matches!(error, ClientError::Protocol { .. }), "{error:?}");
        let error = client.put_chunk(&endpoint("n"), None, &Arc::new(envelope(b"y"))).await;
        let error = error.unwrap_err();
        assert!(matches!(error, ClientError::Protocol { .. }), "{error:?}");
        let error = client.release_chunk(&endpoint("n"), None, &ids[0]).await.unwrap_err();
        assert!(matches!(error, ClientError::Protocol { .. }), "{error:?}");
    }
}
